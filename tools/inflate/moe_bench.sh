#!/usr/bin/env bash
# The MoE benchmark rows, for an IDLE machine (timings): build what is missing (the synthetic
# MoE workload and its store, the inflated draft), print its routing statistics once (counts:
# kept in OUT, not rerun), then tokens/s and bytes read per token for O_DIRECT + expert cache,
# + each prefetch guess, the page cache, chain speculation with the inflated draft and
# llama.cpp's memory-mapped run of the same GGUF, each in a fresh memory cgroup of CAP.
# Everything it writes goes under OUT.
#   tools/inflate/moe_bench.sh [SHAPE] [CAP] [OUT]
#   SHAPE: inflated-moe-small (default: 3.0 GB GGUF + ~3 GB store, CAP 1.5GB) or
#          inflated-30b-a3b (18.7 GB GGUF + 18.8 GB store: ~38 GB of disk; CAP 4GB)
#   COUNT, TOKENS, LLAMA_TOKENS (env): prompts and tokens per prompt per row, llama.cpp's tokens
#   per prompt (default 2, 32 and TOKENS: with the workload built, six of the 30B-A3B shape's
#   rows took 9.5 minutes on an idle 2-core AVX512 machine, llama.cpp's at 6 tokens)
set -euo pipefail
SHAPE=${1:-inflated-moe-small}
CAP=${2:-1.5GB}
OUT=${3:-${SPECDEC_CACHE:-$HOME/.cache/specdec}/bench/moe}
PY=${PY:-python}
COUNT=${COUNT:-2}
TOKENS=${TOKENS:-32}
mkdir -p "$OUT"
# Building runs on one thread: torch's intra-op threads spin on many small tensor ops, and on a
# busy 2-core machine that made the 30B-A3B pack ~8x slower (~4 MB/s over its first 1.8 GB on two
# threads, 31 MB/s over the whole pack on one; 2026-12-06, AVX512). `specdec pack` sets one
# thread itself (offload/pack.py: one_thread).
echo "== $(date -u +%FT%TZ) ISA $($PY -c 'import torch; print(torch.backends.cpu.get_cpu_capability())') shape $SHAPE cap $CAP"
if [ ! -f "$OUT/$SHAPE.gguf" ]; then
  start=$(date +%s)
  OMP_NUM_THREADS=1 timeout 3600 $PY -m tools.inflate moe-gguf --shape "$SHAPE" --out "$OUT/$SHAPE.gguf" --keep-free-gb 25
  echo "built $OUT/$SHAPE.gguf in $(( $(date +%s) - start )) s, $(du -h "$OUT/$SHAPE.gguf" | cut -f1)"
fi
if [ ! -f "$OUT/$SHAPE-store/manifest.json" ]; then
  start=$(date +%s)
  timeout 3600 $PY -m specdec pack "$OUT/$SHAPE.gguf" "$OUT/$SHAPE-store"
  echo "packed in $(( $(date +%s) - start )) s, $(du -sh "$OUT/$SHAPE-store" | cut -f1)"
fi
# The chain row's draft: the demo draft (SmolLM2's vocabulary, so it drafts for this workload,
# whose answers are SmolLM2-135M-Instruct's) inflated to a 0.5B-class cost (hidden 896, 24
# layers, the same answers), in 8 bits as the dense bench's q4 workloads get it: 0.53 GB.
DRAFT=${DRAFT:-$OUT/inflated-draft-q8-store}
if [ ! -f "$DRAFT/manifest.json" ]; then
  OMP_NUM_THREADS=1 timeout 1800 $PY -m tools.inflate hf --shape inflated-draft --draft specdec/demo_draft \
    --out "$OUT/inflated-draft-bf16" --keep-free-gb 20
  timeout 1800 $PY -m specdec pack "$OUT/inflated-draft-bf16" "$DRAFT" --quant q8
fi
# Routing statistics are counts, not timings: computed once (it decodes 4 prompts plainly).
if [ ! -f "$OUT/$SHAPE-routing.json" ]; then
  timeout 1800 $PY -m tools.inflate moe-routing "$OUT/$SHAPE-store" --ram "$CAP" --count 4 --tokens 32 \
    --json > "$OUT/$SHAPE-routing.json.tmp" && mv "$OUT/$SHAPE-routing.json.tmp" "$OUT/$SHAPE-routing.json"
fi
$PY -c "import json, sys; from tools.inflate.moe_routing import report_text; print(report_text(json.load(open(sys.argv[1]))))" \
  "$OUT/$SHAPE-routing.json"
timeout 1500 $PY -m tools.inflate moe-bench "$OUT/$SHAPE-store" --cap "$CAP" --draft "$DRAFT" \
  --count "$COUNT" --tokens "$TOKENS" --llama-tokens "${LLAMA_TOKENS:-$TOKENS}" --timeout 300 --json "$OUT/$SHAPE-bench.json"
