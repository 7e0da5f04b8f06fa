"""Timing this CPU's matmul paths: which candidate (specdec/compute/kernels.py) is fastest for
each weight kind and token-count bucket, and what torch's int4 kernel costs, so the cost
models know what a pass of n tokens costs before the first pass (specdec/compute/profile.py).

This runs in a child process (specdec/compute/probe_child.py, started by probe_process.py):
its weights never count in the decoder's resident memory. The result is cached per machine
(probe_cache.py), keyed by `machine()`.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

from .kernels import BUCKETS, CANDIDATES, PATHS, PLAIN_KINDS, Policy

PROBE_SHAPE = (4096, 4096)  # a Llama-7B attention matrix; big enough to leave the caches
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
           "MKL_DEBUG_CPU_TYPE")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_instructions() -> bool:
    """Whether the CPU has bf16 arithmetic instructions (x86 AVX512-BF16/AMX, ARM BF16)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def machine() -> dict:
    """What decides which path is fastest (CPU, instruction set, torch version, threads, the
    ISA-limiting environment variables); the probe cache is keyed by it."""
    return {"cpu": cpu_model(), "isa": torch.backends.cpu.get_cpu_capability(),
            "bf16_instructions": bf16_instructions(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "arch": platform.machine(),
            "env": {k: os.environ[k] for k in ISA_ENV if k in os.environ}}


def _time_ms(fn, reps: int = 3) -> float:
    fn()  # warm-up: first-touch of buffers, kernel selection
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _q4_probe_weight(shape):
    """A random q4 weight of `shape` for timing torch's int4 kernel (None if unavailable)."""
    try:
        from offload.encodings.q4 import Q4Weight
        g = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 16, shape, dtype=torch.uint8, generator=g)
        groups = (shape[0], shape[1] // 32)
        return Q4Weight.from_codes(codes, torch.full(groups, 1e-3), torch.zeros(groups), 32)
    except Exception as e:  # an unusual torch build: cost models fall back to measuring
        print(f"specdec: the int4 kernel could not be probed ({e}); q4 pass costs will be "
              "learned from the first passes", file=sys.stderr)
        return None


def probe(shape=None, buckets=BUCKETS, progress=None) -> Policy:
    """Time every candidate path for each plain kind and bucket, and the int4 kernel, on a
    weight of `shape` (default PROBE_SHAPE). `progress(done, total)` is called before the
    first bucket and after each."""
    shape = shape or PROBE_SHAPE
    g = torch.Generator().manual_seed(0)
    w32 = torch.randn(shape, generator=g) * 0.02
    weights = {"bfloat16": w32.to(torch.bfloat16), "float32": w32}
    q4 = _q4_probe_weight(shape)
    paths: dict[str, dict[int, str]] = {k: {} for k in PLAIN_KINDS}
    timings: dict[str, dict[int, dict[str, float]]] = {k: {} for k in (*PLAIN_KINDS, "q4")}
    if progress:
        progress(0, len(buckets))
    for i, b in enumerate(buckets):
        x32 = torch.randn(b, shape[1], generator=g)
        reps = 3 if b <= 16 else 1  # big buckets are long enough to time once
        for kind, w in weights.items():
            x = x32.to(w.dtype)
            t = {name: _time_ms(lambda f=PATHS[name]: f(x, w), reps) for name in CANDIDATES[kind]}
            timings[kind][b] = t
            paths[kind][b] = min(t, key=t.get)
        if q4 is not None:
            xb = x32.to(torch.bfloat16)
            timings["q4"][b] = {"int4": _time_ms(lambda: q4.linear(xb), reps)}
        if progress:
            progress(i + 1, len(buckets))
    return Policy(paths, timings, machine())
