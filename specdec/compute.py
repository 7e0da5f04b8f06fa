"""Which kernel computes a linear layer, per weight kind and token count, on this CPU.

Every weight matmul of the model goes through `linear()`. A plain weight (a bf16 or float32
tensor) can be multiplied several ways that give the same result up to float rounding, and
which is fastest depends on the CPU far more than on anything else (measured, 11008x4096,
2 threads, ms at 1 / 8 / 32 / 64 tokens):

  AVX512-BF16 (Zen 4): bf16 F.linear runs natively at ~21 GB/s of weights up to 8 tokens.
  AVX2, no bf16 (Zen 3): bf16 F.linear 5.0 / 37 / 137 / 284 (no bf16 instructions: software
  conversion inside the GEMM); the same weight copied into a float32 scratch (9.6 ms, memory
  speed) and multiplied in float32 as W @ x.T: 19 / 32 / 50 / 75; float32 F.linear (x @ W.T)
  is 1.5-2x slower than W @ x.T there (MKL on AMD).

So the paths are measured, not assumed: `probe()` times each candidate on this CPU for each
token-count bucket (1, 2, 4, ... 256) and the fastest wins; the result is cached per machine
(CPU model, instruction set, torch version, threads, the ISA-limiting environment variables),
like the int4 layout fingerprint. Quantized weights (offload/encodings) bring their own
kernel (torch's int4 kernel); the probe times it too, so the cost models know what a pass of
n tokens costs on this CPU before the first pass (`Profile`).

Exactness: every path computes each token's row from that token's activations alone (no
per-batch activation quantization, no batch-dependent scaling), so a token's result does not
depend on the other tokens in the pass and speculation stays lossless. Paths differ from each
other only in float summation order, as F.linear itself does between 1 and 8 tokens.

Until `use()` installs a probed policy (specdec.load does, once per process), `linear()` is
plain F.linear: a model built directly (tests, tools) computes exactly as transformers does.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PLAIN_KINDS = ("bfloat16", "float32")
PROBE_SHAPE = (4096, 4096)  # a Llama-7B attention matrix; big enough to leave the caches
SCRATCH_ELEMENTS = 1 << 22  # float32 scratch for upcasting bf16 weights: 16 MB, in row chunks
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
           "MKL_DEBUG_CPU_TYPE")
CACHE_VERSION = 1


def bucket(n: int) -> int:
    """The bucket a pass of n tokens is dispatched by: the smallest bucket >= n."""
    for b in BUCKETS:
        if n <= b:
            return b
    return BUCKETS[-1]


# -- the paths ----------------------------------------------------------------------------------
def linear_native(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    """F.linear in the weight's own dtype (bf16 is fast where the CPU has bf16 instructions)."""
    return F.linear(x, w, bias)


def linear_wxt(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    """float32 weights: y = (W @ x.T).T, the orientation MKL is fast in on AMD CPUs."""
    lead, k = x.shape[:-1], x.shape[-1]
    y = torch.mm(w, x.reshape(-1, k).t()).t().contiguous().view(*lead, w.shape[0])
    return y if bias is None else y + bias


_scratch = threading.local()


def _scratch_buffer(elements: int) -> torch.Tensor:
    """A float32 buffer reused by every upcast on this thread (never more than
    SCRATCH_ELEMENTS: the RAM plan's runtime reserve covers it)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < elements:
        buf = _scratch.buf = torch.empty(elements, dtype=torch.float32)
    return buf


def linear_upcast(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    """bf16 weights on a CPU without bf16 instructions: copy row chunks of the weight into a
    float32 scratch (a copy into memory already mapped runs at memory speed; `.float()` on
    a fresh tensor is 10x slower, page faults) and multiply in float32 as W @ x.T. Rounding
    as bf16 F.linear: bf16 inputs, float32 accumulation, output rounded to x's dtype."""
    lead, k = x.shape[:-1], x.shape[-1]
    n_rows = w.shape[0]
    xt = x.reshape(-1, k).float().t()
    rows = max(1, min(n_rows, SCRATCH_ELEMENTS // k))
    buf = _scratch_buffer(rows * k)
    out = torch.empty(n_rows, xt.shape[1], dtype=torch.float32)
    for r0 in range(0, n_rows, rows):
        r1 = min(n_rows, r0 + rows)
        chunk = buf[:(r1 - r0) * k].view(r1 - r0, k)
        chunk.copy_(w[r0:r1])
        torch.mm(chunk, xt, out=out[r0:r1])
    y = out.t().contiguous()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).view(*lead, n_rows)


PATHS = {"native": linear_native, "wxt": linear_wxt, "upcast": linear_upcast}
CANDIDATES = {"bfloat16": ("native", "upcast"), "float32": ("native", "wxt")}


# -- the policy ---------------------------------------------------------------------------------
@dataclass
class Policy:
    """kind -> bucket -> path name, and the probe's figures (ms per call on PROBE_SHAPE)."""
    paths: dict[str, dict[int, str]] = field(default_factory=dict)
    timings: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)

    @classmethod
    def reference(cls) -> "Policy":
        """F.linear everywhere: what transformers computes."""
        return cls({k: {b: "native" for b in BUCKETS} for k in PLAIN_KINDS})

    def path(self, kind: str, n: int) -> str:
        return self.paths.get(kind, {}).get(bucket(n), "native")

    def summary(self) -> str:
        """One line for banners and reports, e.g. 'bf16: native at 1, upcast at 2-256'."""
        parts = []
        for kind in PLAIN_KINDS:
            runs: list[tuple[str, int, int]] = []
            for b in BUCKETS:
                p = self.path(kind, b)
                if runs and runs[-1][0] == p:
                    runs[-1] = (p, runs[-1][1], b)
                else:
                    runs.append((p, b, b))
            text = ", ".join(f"{p} at {lo}" if lo == hi else f"{p} at {lo}-{hi}" for p, lo, hi in runs)
            parts.append(f"{'bf16' if kind == 'bfloat16' else 'fp32'}: {text}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"version": CACHE_VERSION, "machine": self.machine,
                "paths": {k: {str(b): p for b, p in v.items()} for k, v in self.paths.items()},
                "timings_ms": {k: {str(b): t for b, t in v.items()} for k, v in self.timings.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Policy":
        paths = {k: {int(b): p for b, p in v.items() if p in PATHS} for k, v in d["paths"].items()}
        timings = {k: {int(b): t for b, t in v.items()} for k, v in d.get("timings_ms", {}).items()}
        return cls(paths, timings, d.get("machine", {}))


_active = Policy.reference()


def use(policy: Policy) -> None:
    """Install `policy` for every linear() in this process."""
    global _active
    _active = policy


def active() -> Policy:
    return _active


def linear(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    """A plain weight's linear by the active policy (x and w share a dtype, as for F.linear)."""
    kind = "bfloat16" if w.dtype == torch.bfloat16 else "float32" if w.dtype == torch.float32 else None
    if kind is None or x.dtype != w.dtype:
        return F.linear(x, w, bias)
    n = x.numel() // x.shape[-1]
    return PATHS[_active.path(kind, n)](x, w, bias)


# -- the machine ---------------------------------------------------------------------------------
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
    """What decides which path is fastest; the probe cache is keyed by it."""
    return {"cpu": cpu_model(), "isa": torch.backends.cpu.get_cpu_capability(),
            "bf16_instructions": bf16_instructions(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "arch": platform.machine(),
            "env": {k: os.environ[k] for k in ISA_ENV if k in os.environ}}


# -- the probe -----------------------------------------------------------------------------------
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
    weight of `shape` (default PROBE_SHAPE)."""
    shape = shape or PROBE_SHAPE
    g = torch.Generator().manual_seed(0)
    w32 = torch.randn(shape, generator=g) * 0.02
    weights = {"bfloat16": w32.to(torch.bfloat16), "float32": w32}
    q4 = _q4_probe_weight(shape)
    paths: dict[str, dict[int, str]] = {k: {} for k in PLAIN_KINDS}
    timings: dict[str, dict[int, dict[str, float]]] = {k: {} for k in (*PLAIN_KINDS, "q4")}
    for i, b in enumerate(buckets):
        if progress:
            progress(i, len(buckets))
        x32 = torch.randn(b, shape[1], generator=g)
        for kind, w in weights.items():
            x = x32.to(w.dtype)
            reps = 3 if b <= 16 else 1  # big buckets are long enough to time once
            t = {name: _time_ms(lambda f=PATHS[name]: f(x, w), reps) for name in CANDIDATES[kind]}
            timings[kind][b] = t
            paths[kind][b] = min(t, key=t.get)
        if q4 is not None:
            xb = x32.to(torch.bfloat16)
            timings["q4"][b] = {"int4": _time_ms(lambda: q4.linear(xb), 3 if b <= 16 else 1)}
    if progress:
        progress(len(buckets), len(buckets))
    return Policy(paths, timings, machine())


PROBE_IN_CHILD = True  # tests that patch the probe's internals run it in-process


def _child_probe(threads: int, shape) -> dict:
    torch.set_num_threads(threads)
    return probe(shape=shape).as_dict()


def probe_in_child(progress=None) -> Policy:
    """The probe in a spawned child process: its weights (~200 MB at their peak) never count
    in this process's resident memory, which must stay inside the user's RAM budget. The
    child has this process's thread count, shape and environment (the ISA variables)."""
    import multiprocessing

    if progress:
        progress(0, 1)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        d = pool.apply(_child_probe, (torch.get_num_threads(), PROBE_SHAPE))
    if progress:
        progress(1, 1)
    policy = Policy.from_dict(d)
    policy.machine = machine()  # the parent's view (same CPU, threads and environment)
    return policy


def cache_file(cache_dir: Path) -> Path:
    import hashlib
    key = hashlib.sha256(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "compute" / f"probe-{key}.json"


def load_or_probe(cache_dir: Path | None, progress: bool = False) -> Policy:
    """The probed policy for this machine, from the cache when there (run once: ~5 s on a
    2-core AVX2 machine)."""
    path = cache_file(cache_dir) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            d = json.loads(path.read_text())
            if d.get("version") == CACHE_VERSION and d.get("machine") == machine():
                return Policy.from_dict(d)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is measured again and replaced
    report = None
    if progress:
        def report(i, total):
            end = "\n" if i == total else ""
            print(f"\rspecdec: timing this CPU's matmul paths (once per machine): {i}/{total}",
                  end=end, file=sys.stderr, flush=True)
    policy = probe_in_child(report) if PROBE_IN_CHILD else probe(progress=report)
    if path is not None:
        from offload.atomic import write_atomic
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(policy.as_dict(), indent=1))
        except OSError as e:  # read-only cache: probe again next time, say so once
            print(f"specdec: could not cache the matmul probe in {path} ({e}); it will run "
                  "again next time", file=sys.stderr)
    return policy


# -- what a pass costs -----------------------------------------------------------------------------
class Profile:
    """Seconds of compute a pass of n tokens costs for a model's linear weights, from the
    probe: each weight kind's time per weight element at n tokens (the fastest path), times
    the model's elements of that kind. The cost models start from this curve instead of a
    guess, and learn the rest (the read, attention) from measured passes."""

    def __init__(self, policy: Policy, elements: dict[str, int]):
        self.policy = policy
        self.elements = {k: v for k, v in elements.items() if v}
        probe_elements = PROBE_SHAPE[0] * PROBE_SHAPE[1]
        self._per_element = {}
        for kind in self.elements:
            per_bucket = {}
            for b in BUCKETS:
                t = policy.timings.get(kind if kind != "q8" else "q4", {}).get(b)
                if t:
                    factor = 2.0 if kind == "q8" else 1.0  # two int4 planes
                    per_bucket[b] = factor * min(t.values()) * 1e-3 / probe_elements
            if per_bucket:
                self._per_element[kind] = per_bucket

    @property
    def known(self) -> bool:
        return bool(self._per_element)

    def seconds(self, tokens: int) -> float:
        """Estimated matmul seconds of a pass over `tokens` tokens (interpolated between
        buckets, extrapolated linearly past the last)."""
        total = 0.0
        for kind, per in self._per_element.items():
            total += self.elements[kind] * _interpolate(per, tokens)
        return total


def _interpolate(per_bucket: dict[int, float], n: int) -> float:
    xs = sorted(per_bucket)
    if n <= xs[0]:
        return per_bucket[xs[0]]
    for lo, hi in zip(xs, xs[1:]):
        if n <= hi:
            f = (n - lo) / (hi - lo)
            return per_bucket[lo] + f * (per_bucket[hi] - per_bucket[lo])
    lo, hi = xs[-2], xs[-1]
    slope = (per_bucket[hi] - per_bucket[lo]) / (hi - lo)
    return per_bucket[hi] + slope * (n - hi)


def _kind(encoding: str, compute_dtype: torch.dtype) -> str:
    """The kernel kind a weight of `encoding` runs on in `compute_dtype`. Plain weights are
    converted to the compute dtype; q4/q8 take the int4 kernel with bf16 activations and their
    exact (dequantizing, unprofiled) path in float32."""
    if encoding in ("q4", "q8"):
        return encoding if compute_dtype == torch.bfloat16 else f"{encoding}-exact"
    return str(compute_dtype).removeprefix("torch.")


def linear_elements(model) -> dict[str, int]:
    """Weight elements a pass multiplies, by kernel kind: the decoder layers' matrices and
    the output layer. A streamed model is read from its store's manifest (nothing is read
    from disk); a resident one from its tensors."""
    counts: dict[str, int] = {}

    def add(encoding: str, shape) -> None:
        if len(shape) == 2:
            kind = _kind(encoding, model.dtype)
            counts[kind] = counts.get(kind, 0) + int(shape[0]) * int(shape[1])

    store = getattr(model.weights, "store", None)
    if store is not None:
        for i in range(store.num_layers):
            for meta in store.layer_tensors(i).values():
                add(meta.dtype, meta.shape)
    else:
        for layer in model.weights.layers():
            for t in layer.values():
                add(getattr(t, "encoding", "plain"), tuple(t.shape))
    head = model.head
    add(getattr(head, "encoding", "plain"), tuple(head.shape))
    return counts


def pass_profile(model, policy: Policy | None = None) -> Profile | None:
    """The probe's matmul-seconds curve for one pass of `model`, or None when the active
    policy was not probed (then the cost models learn from passes alone)."""
    policy = policy or _active
    if not policy.timings:
        return None
    profile = Profile(policy, linear_elements(model))
    return profile if profile.known else None
