"""CLI commands for the offload side: pack, verify, bench io, bench offload (the benchmarks
themselves live in specdec/bench/; this module only parses and dispatches).

`add_offload_commands(subparsers)` registers them on specdec's argparse subparsers; each
parser's `handler` (also `func`) default is its handler, `handler(args) -> int` (the exit status). Handlers
print known errors (bad store, bad checkpoint, impossible budget) as one line and return 1,
never a traceback; a bad flag value returns 2 (specdec's exit-code convention, see exit_codes.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .exit_codes import EXIT_PROBLEM, EXIT_USAGE
from .load_args import add_kernels_argument


def add_offload_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "pack", help="pack a HF safetensors dir or .gguf into a layer store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pack a checkpoint into a layer store for streaming.\n\n"
        "A .gguf keeps its own quantization by default: Q4_0/Q4_1/Q4_K are stored as q4 and "
        "Q8_0/Q5_0/Q5_1/Q5_K as q8,\nexactly; other types are converted (Q6_K, IQ4_* -> q8; "
        "Q2_K, Q3_K, IQ1-3_* -> q4) and each conversion\nprints its error; F16 -> bf16. A "
        "safetensors directory stays bf16 unless --quant asks for q4 (5 bits per weight,\n"
        "~0.31x the bytes read per pass) or q8 (9 bits): round-to-nearest of the linear "
        "weights; norms and\nthe embedding table stay plain. Works for drafts too (a store "
        "loads as a draft: --draft STORE).\nq4/q8 bytes are laid out for this CPU's int4 "
        "kernel; on another CPU run `specdec repack STORE`.")
    p.add_argument("src", help="Hugging Face model directory (safetensors) or .gguf file")
    p.add_argument("out", help="store directory to create")
    p.add_argument("--quant", choices=["q4", "q8", "bf16"], default=None,
                   help="quantize the linear weights (default: a .gguf's own quantization; "
                   "bf16 for safetensors)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "bfloat16", "float32", "fp32"],
                   help="dtype of plain tensors (default bf16; float32 for exact comparisons: "
                   "q4/q8 scales are then float32 too)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pack, handler=cmd_pack)

    r = subparsers.add_parser("repack", help="convert a store's q4/q8 bytes for this CPU",
                              description="Rewrite a store's int4 bytes for this machine's CPU "
                              "layout (once per store and machine; atomic; ~0.2 GB/s).")
    r.add_argument("store")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_repack, handler=cmd_repack)

    v = subparsers.add_parser("verify", help="check every store file against its sha256",
                              description="Check a store's files against the manifest's checksums.")
    v.add_argument("store")
    v.set_defaults(func=cmd_verify, handler=cmd_verify)

    b = subparsers.add_parser("bench", help="offload-speed benchmarks")
    add_bench_commands(b.add_subparsers(dest="bench", required=True, metavar="{io,offload}"))


def add_bench_commands(bench_subparsers) -> None:
    """Register `io` under an existing `bench` parser's subparsers (for a commands.py that owns `bench`)."""
    io = bench_subparsers.add_parser(
        "io", help="disk read vs streamed verification pass, in one run",
        description="Measure, in one run and uncached (O_DIRECT): the raw sequential read of the "
                    "bytes one pass streams, and a streamed forward pass for each token count.")
    io.add_argument("store")
    io.add_argument("--tokens", default="1,8,32,64", help="token counts per pass (default 1,8,32,64)")
    io.add_argument("--ram", default=None, help="RAM budget; pins layers that fit (default: stream all)")
    io.add_argument("--repeat", type=int, default=3, help="back-to-back passes per token count (default 3)")
    io.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_kernels_argument(io)
    io.set_defaults(func=cmd_bench_io, handler=cmd_bench_io)
    _add_bench_offload(bench_subparsers)


def cmd_bench_offload(args) -> int:
    from ..bench.runner import cmd_bench_offload as run  # torch etc. only when it runs

    return run(args)


def _add_bench_offload(bench_subparsers) -> None:
    o = bench_subparsers.add_parser(
        "offload", help="specdec vs the disk floor and transformers+accelerate, same RAM cap",
        description="Run every contender (floor, specdec plain/chain/tree, transformers+accelerate "
                    "plain/assisted) in its own process under one RAM cap (a memory cgroup, else "
                    "page-cache eviction); write report.json, report.md and PNG plots.")
    o.add_argument("--quick", action="store_true", help="small run (~2 min): CI's smoke test")
    o.add_argument("--out", help="results directory (default results/bench-<timestamp>)")
    o.add_argument("--workloads", default="demo,synthetic",
                   help="comma list of demo, synthetic, inflated-7b (= inflated-7b-bf16,inflated-7b-q4), "
                        "inflated-7b-bf16, inflated-7b-q4, seed-13b (default demo,synthetic). The "
                        "inflated ones are INFLATED models: the I/O and compute of a 7B/13B shape, "
                        "the answers of SmolLM2-135M (built once into the cache, ~40 GB of disk)")
    o.add_argument("--prompts", type=int, default=4, help="bench prompts per inflated workload (default 4: "
                   "with 48 new tokens each, ~60 passes per mode, enough for the adaptive policies to settle)")
    o.add_argument("--context", type=int, help="inflated workloads: plan KV for this many tokens, as a "
                   "chat does (default: what the prompts and replies need)")
    o.add_argument("--with-hf", action="store_true", help="also run transformers + accelerate on the "
                   "inflated workloads (skipped by default: minutes per token)")
    o.add_argument("--llama-python", metavar="PATH", help="interpreter with llama-cpp-python for the "
                   "llama.cpp contenders (default: this one, if it can import llama_cpp)")
    o.add_argument("--draft-tokens", type=int, default=8, help="greedy draft tokens per pass of "
                   "llama.cpp's speculative contender (default 8)")
    o.add_argument("--tree-nodes", type=int, default=None, help="a fixed tree size for specdec's tree "
                   "and overlap contenders (default: the cost model sizes each pass's tree)")
    for name, ram in (("inflated-7b-bf16", "4GB"), ("inflated-7b-q4", "2GB"), ("seed-13b", "3.5GB")):
        o.add_argument(f"--{name}-ram", help=f"RAM cap of {name} (default {ram})")
    o.add_argument("--synthetic", help="synthetic target shape: llama2-7b (default), qwen2.5-7b, "
                   "llama-1b (default under --quick)")
    o.add_argument("--synthetic-ram", help="RAM cap for the synthetic target (default 4GB; 1GB quick)")
    o.add_argument("--demo-ram", help="RAM cap for the demo pair (default specdec.demo.DEMO_RAM)")
    o.add_argument("--draft", help="draft dir for the demo pair (default specdec/demo_draft), "
                   "or for --target")
    o.add_argument("--target", help="benchmark this HF target dir with --draft instead of the "
                   "built-in workloads (prompts from specdec/configs/bench/prompts.toml)")
    o.add_argument("--ram", help="RAM cap for --target (default 4GB)")
    o.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="compute dtype for --target (float32: exact greedy equality)")
    o.add_argument("--stream-all", action="store_true",
                   help="--target: give specdec the least budget it runs in, so every layer streams")
    o.add_argument("--contenders", help="comma list to run (default all): floor,plain,chain,tree,overlap,"
                   "self_draft,strong_chain,strong_tree,strong_overlap (the strong-pair draft, inflated "
                   "workloads),"
                   "llamacpp,llamacpp_spec,hf,hf_assisted")
    o.add_argument("--max-new-tokens", type=int, help="override the workloads' new tokens per prompt")
    o.add_argument("--timeout", type=float, help="seconds per contender (default 3600); one past it "
                   "is killed and its row says so")
    o.add_argument("--threads", type=int, help="torch threads for every contender (default: all cores)")
    o.add_argument("--no-cgroup", action="store_true",
                   help="do not make a memory cgroup; only evict the page cache before each run")
    o.add_argument("--rebuild", metavar="DIR", help="only re-render DIR/report.json into report.md "
                   "and the plots (no runs)")
    o.add_argument("--cache-dir", help="where derived models go (default $SPECDEC_CACHE or ~/.cache/specdec)")
    o.set_defaults(func=cmd_bench_offload, handler=cmd_bench_offload)


def _known_errors() -> tuple[type[BaseException], ...]:
    from offload.budget import BudgetError
    from offload.checkpoint import CheckpointError
    from offload.format import StoreError
    from offload.pack import PackError

    from ..config import ConfigError

    return (StoreError, PackError, CheckpointError, BudgetError, ConfigError)


def _fail(e: BaseException) -> int:
    print(f"specdec: error: {e}", file=sys.stderr)
    return EXIT_PROBLEM


def cmd_pack(args) -> int:
    from offload.pack import pack

    try:
        t0 = time.perf_counter()
        out = pack(args.src, args.out, dtype=args.dtype, progress=not args.quiet,
                   overwrite=args.overwrite, quant=args.quant)
    except _known_errors() as e:
        return _fail(e)
    from offload.format import open_store

    print(f"packed {args.src} -> {out} in {time.perf_counter() - t0:.1f} s "
          f"({open_store(out).encoding_summary()})")
    return 0


def cmd_repack(args) -> int:
    from offload.repack import repack_store

    try:
        done = repack_store(args.store, progress=not args.quiet)
    except _known_errors() as e:
        return _fail(e)
    print(f"{args.store}: " + ("repacked for this machine" if done else
                               "already laid out for this machine; nothing to do"))
    return 0


def cmd_verify(args) -> int:
    from offload.format import open_store, verify

    try:
        store = open_store(args.store)
    except _known_errors() as e:
        return _fail(e)
    problems = verify(store)
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"{store.path}: OK ({len(store.files)} files, {store.num_layers} layers, checksums match)")
    return 0


def cmd_bench_io(args) -> int:
    try:
        tokens = [int(t) for t in str(args.tokens).split(",") if t.strip()]
        if not tokens or min(tokens) < 1:
            raise ValueError
    except ValueError:
        print(f"specdec: usage error: --tokens {args.tokens!r}: give positive integers like 1,8,32,64",
              file=sys.stderr)
        return EXIT_USAGE
    from ..bench.iobench import bench_io, format_bench_io  # torch etc. only when it runs

    try:
        result = bench_io(args.store, tokens, ram=args.ram, repeat=max(1, args.repeat),
                          kernels=args.kernels)
    except _known_errors() as e:
        return _fail(e)
    print(json.dumps(result, indent=1) if args.json else format_bench_io(result))
    return 0


def main(argv=None) -> int:
    """Standalone entry (python -m specdec.cli.offload_commands ...), same commands as `specdec`."""
    parser = argparse.ArgumentParser(prog="specdec")
    add_offload_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
