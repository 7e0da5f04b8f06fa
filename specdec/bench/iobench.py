"""`specdec bench io` and its measurement helpers: the raw O_DIRECT read of one pass's
streamed bytes against streamed forward passes, in the same run.

The page cache hides the disk, so the raw read goes through the same O_DIRECT reader as
streaming; bytes really read from the device come from /proc/self/io (Linux).
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from offload.reader import DirectReader, aligned_buffer

from .memcap import proc_io


def proc_read_bytes() -> int | None:
    """Bytes this process has caused to be read from storage (Linux), else None: the
    caller reports None, not a made-up number."""
    return proc_io().get("read_bytes")


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def time_raw_read(files: list[Path], reader: DirectReader | None = None) -> tuple[float, int, bool]:
    """Read `files` back to back, uncached, into one reused buffer, as one pass streams them.
    Returns (seconds, bytes, all_direct)."""
    if not files:
        return 0.0, 0, True
    own = reader is None
    reader = reader or DirectReader()
    buf = aligned_buffer(max(f.stat().st_size for f in files))
    fallback0 = reader.fallback_files
    try:
        t0 = time.perf_counter()
        total = sum(reader.read_file(f, buf) for f in files)
        seconds = time.perf_counter() - t0
    finally:
        if own:
            reader.close()
    return seconds, total, reader.fallback_files == fallback0


def bench_io(store_path, tokens: list[int], ram=None, repeat: int = 3,
             max_context: int | None = None, kernels: str | None = None) -> dict:
    """Raw O_DIRECT read of one pass's streamed bytes vs streamed forward passes, same run.

    Each token count runs `repeat` passes back to back (so the reader never gets a head
    start from idle time) after one unmeasured warm-up pass, which also does the one-off
    first-read checksums. `max_context` sizes the KV cache the plan reserves (default: the
    largest token count), so the plan can match a generation run's under the same budget."""
    import torch

    from offload.format import open_store
    from offload.prefetch import StreamedWeights

    from ..config import ModelArgs
    from ..families import build_model
    from ..memory_plan import streaming_plan

    from ..compute.choice import kernel_policy
    from ..compute.probe import machine
    from ..cache_root import cache_root

    policy = kernel_policy(kernels, cache_root())
    io0 = proc_read_bytes()
    store = open_store(store_path)
    args = ModelArgs.from_hf(store.config, source=f"{store.path}/manifest.json")
    dtype = getattr(torch, store.dtype)
    pinned, ring, plan_text = None, 2, "no --ram: every layer streamed"
    if ram is not None:
        plan = streaming_plan(store, args, None, ram, dtype, max(max_context or 0, max(tokens)))
        pinned, ring, plan_text = plan.pinned, max(plan.ring_size, 1), plan.summary
    with StreamedWeights(store, pinned=pinned, ring_size=ring) as weights:
        model = build_model(args, weights, dtype, policy)
        cache = model.new_cache(max(tokens))
        _pass(model, cache, 1)  # warm-up: first-read checksums, lazy allocations
        weights.wait_prefetched()  # the ring refills, as it does while the draft runs
        files = [store.layer_file(i) for i in weights.streamed_layers]
        raw_seconds, raw_bytes, direct = time_raw_read(files)
        stream_only = _stream_only_seconds(weights, repeat)
        passes = [_timed_passes(model, cache, weights, n, repeat, raw_seconds) for n in tokens]
    io1 = proc_read_bytes()
    return {"store": str(store.path), "dtype": store.dtype, "layers": store.num_layers,
            "streamed_layers": len(files), "plan": plan_text, "ring_size": ring,
            "streamed_bytes": raw_bytes, "raw_seconds": raw_seconds,
            "raw_gb_per_s": raw_bytes / raw_seconds / 1e9 if raw_seconds else None,
            "o_direct": direct, "stream_only_seconds": stream_only,
            "stream_only_ratio_to_raw": stream_only / raw_seconds if raw_seconds else None,
            "passes": passes,
            "bytes_read": None if io0 is None or io1 is None else io1 - io0,
            "peak_rss_bytes": peak_rss_bytes(), "threads": torch.get_num_threads(),
            "machine": machine(), "kernels": policy.summary()
            if policy.timings else "reference (F.linear)"}


def _stream_only_seconds(weights, repeat: int) -> float:
    """A pass over the layers with no compute: the prefetcher reading continuously. The first
    pass is not timed: it takes the layers the ring read ahead before the clock started, a
    head start (2 of 31 layers at seed-13b) that would make the disk look faster than it is;
    after it, each timed pass is exactly one pass's reads, back to back."""
    for _layer in weights.layers():
        pass
    t0 = time.perf_counter()
    for _ in range(repeat):
        for _layer in weights.layers():
            pass
    return (time.perf_counter() - t0) / repeat


def _pass(model, cache, n: int) -> None:
    cache.crop(0)
    model.forward(torch_tokens(n, model.args.vocab_size), cache.next_positions(n), cache)


def torch_tokens(n: int, vocab: int):
    import torch

    return torch.arange(n) % vocab


def _timed_passes(model, cache, weights, n: int, repeat: int, raw_seconds: float) -> dict:
    weights.reset_stats()
    t0 = time.perf_counter()
    for _ in range(repeat):
        _pass(model, cache, n)
    seconds = (time.perf_counter() - t0) / repeat
    s = weights.stats
    return {"tokens": n, "seconds": seconds,
            "ratio_to_raw": seconds / raw_seconds if raw_seconds else None,
            "compute_wait_seconds": s.compute_wait_seconds / repeat,
            "read_seconds": s.read_seconds / repeat, "bytes_read": s.bytes_read // repeat}


def format_bench_io(r: dict) -> str:
    gbps = f"{r['raw_gb_per_s']:.2f} GB/s" if r["raw_gb_per_s"] else "n/a"
    m = r["machine"]
    lines = [f"store {r['store']} ({r['dtype']}, {r['streamed_layers']}/{r['layers']} layers streamed)",
             f"CPU {m['cpu']} ({m['isa']}, {'' if m['bf16_instructions'] else 'no '}bf16 instructions), "
             f"{r['threads']} threads; kernels: {r['kernels']}",
             f"plan: {r['plan']}",
             f"raw {'O_DIRECT' if r['o_direct'] else 'uncached (fallback)'} read of "
             f"{r['streamed_bytes'] / 1e9:.3f} GB: {r['raw_seconds']:.3f} s ({gbps})",
             f"stream only (no compute): {r['stream_only_seconds']:.3f} s",
             f"{'tokens':>7} {'pass s':>9} {'x raw':>7} {'waited s':>9}"]
    for p in r["passes"]:
        ratio = f"{p['ratio_to_raw']:.2f}" if p["ratio_to_raw"] else "n/a"
        lines.append(f"{p['tokens']:>7} {p['seconds']:>9.3f} {ratio:>7} {p['compute_wait_seconds']:>9.3f}")
    read = "n/a" if r["bytes_read"] is None else f"{r['bytes_read'] / 1e9:.3f} GB"
    lines.append(f"read from disk (/proc/self/io): {read}; peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB")
    return "\n".join(lines)
