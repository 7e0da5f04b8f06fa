"""python -m tools.inflate {hf,gguf} --shape NAME --out PATH [--draft DIR]
python -m tools.inflate workload NAME [--cache-dir DIR] [--with-hf]
python -m tools.inflate moe-gguf --shape inflated-30b-a3b --out PATH   (SYNTHETIC MoE, tools/inflate/moe.py)
python -m tools.inflate moe-routing TARGET [--ram 4GB] [--prompts FILE] [--tokens N]
python -m tools.inflate moe-bench STORE --cap 4GB [--draft DIR] [--tokens N]   (timings: idle machine)"""
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
    _moe_parsers(sub)
    a = ap.parse_args(argv)
    if a.command == "moe-routing":
        return _moe_routing(a)
    if a.command == "moe-bench":
        return _moe_bench(a)
    started = time.time()
    try:
        out = _workload(a) if a.command == "workload" else [_moe(a) if a.command == "moe-gguf" else _model(a)]
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


def _moe_parsers(sub) -> None:
    from .moe import MOE_SHAPES

    m = sub.add_parser("moe-gguf", help="a SYNTHETIC mixture-of-experts GGUF of a real MoE's shape "
                       "whose answers are SmolLM2's (tools/inflate/moe.py)")
    m.add_argument("--shape", default="inflated-30b-a3b", choices=sorted(MOE_SHAPES))
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--noise", type=float, default=NOISE_STD, help="std of the padding noise (exact at any value)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--keep-free-gb", type=float, default=25.0, help="refuse if less would stay free")
    r = sub.add_parser("moe-routing", help="routing statistics of a MoE target on prompts, beside the "
                       "published figures (plain decoding)")
    r.add_argument("target", type=Path, help="a MoE store, GGUF or checkpoint")
    r.add_argument("--ram", default=None, help="RAM budget (a store streams under it)")
    r.add_argument("--prompts", type=Path, default=None,
                   help="one prompt per line (default: tools/speculation_prompts.txt)")
    r.add_argument("--count", type=int, default=4, help="prompts used (the first N)")
    r.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt")
    r.add_argument("--json", action="store_true", help="print the whole report as JSON")
    b = sub.add_parser("moe-bench", help="a MoE store's expert reads under a memory cap: O_DIRECT + "
                       "expert cache, + prefetch, page cache, chain (timings: run on an idle machine)")
    b.add_argument("store", type=Path, help="a MoE store (specdec pack the GGUF first)")
    b.add_argument("--cap", required=True, help="memory cap and RAM budget, e.g. 4GB")
    b.add_argument("--draft", type=Path, default=None, help="a draft for the chain row (e.g. specdec/demo_draft)")
    b.add_argument("--prompts", type=Path, default=None, help="one prompt per line (default: tools/speculation_prompts.txt)")
    b.add_argument("--count", type=int, default=2, help="prompts used (the first N)")
    b.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt")
    b.add_argument("--timeout", type=float, default=900, help="seconds per contender")
    b.add_argument("--json", type=Path, default=None, help="also write the rows here")
    b.add_argument("--contenders", default=None,
                   help="comma-separated rows to run (default: all); llama.cpp's (llamacpp-mmap) "
                        "takes its prompts and checks its tokens against plain-direct's")
    b.add_argument("--gguf", type=Path, default=None,
                   help="llama.cpp's row: the GGUF the store was packed from (default: its source)")
    b.add_argument("--llama-tokens", type=int, default=None, metavar="N",
                   help="llama.cpp's row: tokens per prompt (default --tokens; fewer bounds a slow row, "
                        "its greedy tokens are checked against plain-direct's first N)")
    b.add_argument("--llama-python", default=None, metavar="PATH",
                   help="interpreter with llama-cpp-python for llama.cpp's row (default: this one)")


def _moe(a) -> Path:
    from .moe import MOE_SHAPES, write_moe_gguf

    return write_moe_gguf(None, MOE_SHAPES[a.shape], a.out, a.noise, a.seed, int(a.keep_free_gb * 1e9))


def _moe_routing(a) -> int:
    import specdec

    from .moe_routing import report_text, routing_report

    prompts = _prompts(a)
    with specdec.load(a.target, ram=a.ram, progress=False) as lm:
        report = routing_report(lm, prompts, a.tokens)
    print(json.dumps(report, indent=1) if a.json else report_text(report))
    return 0


def _prompts(a) -> list[str]:
    prompts_file = a.prompts or Path(__file__).resolve().parent.parent / "speculation_prompts.txt"
    return [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()][:a.count]


def _moe_bench(a) -> int:
    from offload.atomic import write_atomic
    from offload.budget import parse_size

    from .moe_bench import CONTENDERS, raw_expert_read, run_all, table
    from .moe_llama import CONTENDER, agreement_line, llama_row

    only = {c.strip() for c in (a.contenders or "").split(",") if c.strip()} or None
    unknown = (only or set()) - set(CONTENDERS) - {CONTENDER}
    if unknown:
        print(f"moe-bench: error: unknown contender(s) {sorted(unknown)}; choose from "
              f"{[*CONTENDERS, CONTENDER]}", file=sys.stderr)
        return 2
    raw = raw_expert_read(a.store)
    cap = parse_size(a.cap)
    def save(rows: list[dict]) -> None:  # after every row: a run stopped from outside keeps the finished ones
        if a.json:
            write_atomic(a.json, json.dumps({"raw": raw, "rows": rows}, indent=1))
        print(table(rows[-1:], raw).splitlines()[2], file=sys.stderr, flush=True)

    rows = run_all(a.store, cap, _prompts(a), a.tokens, a.draft, a.timeout, only, on_row=save)
    if not only or CONTENDER in only:
        rows.append(llama_row(a.store, a.gguf, cap, rows, a.llama_tokens or a.tokens, a.timeout,
                              a.llama_python))
        save(rows)
    note = agreement_line(rows[-1]) if rows and rows[-1]["contender"] == CONTENDER else ""
    print(table(rows, raw) + (f"\n{note}" if note else ""))
    return 0

