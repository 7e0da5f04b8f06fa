#!/usr/bin/env bash
# The MoE benchmark rows, for an IDLE machine (timings): build the synthetic MoE workload if
# missing, pack it, print its routing statistics, then tokens/s and bytes read per token for
# O_DIRECT + expert cache, + prefetch, the page cache, and chain speculation, each in a fresh
# memory cgroup of CAP. Everything it writes goes under OUT.
#   tools/inflate/moe_bench.sh [SHAPE] [CAP] [OUT]
#   SHAPE: inflated-moe-small (default: 3.0 GB GGUF + ~3 GB store, CAP 1.5GB) or
#          inflated-30b-a3b (18.7 GB GGUF + ~19 GB store: ~38 GB of disk; CAP 4GB)
set -euo pipefail
SHAPE=${1:-inflated-moe-small}
CAP=${2:-1.5GB}
OUT=${3:-${SPECDEC_CACHE:-$HOME/.cache/specdec}/bench/moe}
PY=${PY:-python}
mkdir -p "$OUT"
echo "== $(date -u +%FT%TZ) ISA $($PY -c 'import torch; print(torch.backends.cpu.get_cpu_capability())') shape $SHAPE cap $CAP"
if [ ! -f "$OUT/$SHAPE.gguf" ]; then
  start=$(date +%s)
  timeout 3600 $PY -m tools.inflate moe-gguf --shape "$SHAPE" --out "$OUT/$SHAPE.gguf" --keep-free-gb 25
  echo "built $OUT/$SHAPE.gguf in $(( $(date +%s) - start )) s, $(du -h "$OUT/$SHAPE.gguf" | cut -f1)"
fi
if [ ! -f "$OUT/$SHAPE-store/manifest.json" ]; then
  start=$(date +%s)
  timeout 3600 $PY -m specdec pack "$OUT/$SHAPE.gguf" "$OUT/$SHAPE-store"
  echo "packed in $(( $(date +%s) - start )) s, $(du -sh "$OUT/$SHAPE-store" | cut -f1)"
fi
timeout 1200 $PY -m tools.inflate moe-routing "$OUT/$SHAPE-store" --ram "$CAP" --count 4 --tokens 64
# The chain row needs a draft with its own embeddings and SmolLM2's vocabulary: the bench's
# inflated demo draft (python -m tools.inflate workload inflated-7b-bf16 builds it).
DRAFT=${DRAFT:-${SPECDEC_CACHE:-$HOME/.cache/specdec}/bench/inflated-draft-bf16}
DRAFT_ARGS=()
[ -d "$DRAFT" ] && DRAFT_ARGS=(--draft "$DRAFT") || echo "no draft at $DRAFT: no chain row"
timeout 5400 $PY -m tools.inflate moe-bench "$OUT/$SHAPE-store" --cap "$CAP" "${DRAFT_ARGS[@]}" \
  --count 2 --tokens 64 --timeout 1200 --json "$OUT/$SHAPE-bench.json"
