"""python -m tools.inflate {hf,gguf} --shape NAME --out PATH [--draft DIR]
python -m tools.inflate workload NAME [--cache-dir DIR] [--with-hf]"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .builder import NOISE_STD, SHAPES, InflateError, draft_source, target_source, write_gguf, write_hf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.inflate", description=(
        "Write an INFLATED model: SmolLM2-135M-Instruct (or the demo draft) embedded exactly "
        "into a bigger Llama shape; or the files of one of `specdec bench offload`'s big workloads."))
    sub = ap.add_subparsers(dest="command", required=True)
    for fmt, what in (("hf", "safetensors directory"),
                      ("gguf", "llama.cpp file in the source's quantization (Q4_1 + Q8_0 embeddings)")):
        p = sub.add_parser(fmt, help=what)
        p.add_argument("--shape", default="inflated-7b", choices=sorted(SHAPES))
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--draft", type=Path, help="inflate this draft directory (e.g. specdec/demo_draft) "
                       "instead of SmolLM2 (hf only)")
        p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
        p.add_argument("--noise", type=float, default=NOISE_STD, help="std of the padding noise (exact at any value)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--keep-free-gb", type=float, default=25.0, help="refuse if less would stay free")
    w = sub.add_parser("workload", help="the inflated models a `specdec bench offload` workload reads")
    w.add_argument("name", help="inflated-7b-bf16, inflated-7b-q4, seed-13b or inflated-7b (both 7B)")
    w.add_argument("--cache-dir", help="the bench's --cache-dir (default $SPECDEC_CACHE or ~/.cache/specdec)")
    w.add_argument("--with-hf", action="store_true", help="also the bf16 target's HF dir once its store exists")
    a = ap.parse_args(argv)
    started = time.time()
    try:
        out = _workload(a) if a.command == "workload" else [_model(a)]
    except (InflateError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = {str(p): sum(f.stat().st_size for f in ([p] if p.is_file() else p.iterdir())) for p in out}
    print(json.dumps({"written": sizes, "seconds": round(time.time() - started, 1)}))
    return 0


def _model(a) -> Path:
    keep = int(a.keep_free_gb * 1e9)
    if a.command == "gguf":
        if a.draft:
            raise InflateError("--draft: the GGUF writer inflates SmolLM2's GGUF only.")
        return write_gguf(None, SHAPES[a.shape], a.out, a.noise, a.seed, keep)
    source = target_source()
    if a.draft:
        source = draft_source(a.draft, source)
    return write_hf(source, SHAPES[a.shape], a.out, getattr(torch, a.dtype), a.noise, a.seed, keep)


def _workload(a) -> list[Path]:
    from specdec.bench.inflated import names
    from specdec.bench.workloads import bench_cache

    from .workloads import build_workload

    wanted = names([a.name])
    if not wanted:
        raise ValueError(f"unknown workload {a.name!r}: inflated-7b-bf16, inflated-7b-q4, seed-13b "
                         "or inflated-7b")
    cache = bench_cache(a.cache_dir)
    return [p for name in wanted for p in build_workload(name, cache, a.with_hf)]
