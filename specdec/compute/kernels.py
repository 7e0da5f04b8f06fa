"""The matmul paths of a plain weight, and the policy that picks one per weight kind and
token count. Every weight matmul of the model goes through `linear()`.

A plain weight (a bf16 or float32 tensor) can be multiplied several ways that give the same
result up to float rounding, and which is fastest depends on the CPU far more than on anything
else (measured, 11008x4096, 2 threads, ms at 1 / 8 / 32 / 64 tokens):

  AVX512-BF16 (Zen 4): bf16 F.linear runs natively at ~21 GB/s of weights up to 8 tokens.
  AVX2, no bf16 (Zen 3): bf16 F.linear 5.0 / 37 / 137 / 284 (no bf16 instructions: software
  conversion inside the GEMM); the same weight copied into a float32 scratch (9.6 ms, memory
  speed) and multiplied in float32 as W @ x.T: 19 / 32 / 50 / 75; float32 F.linear (x @ W.T)
  is 1.5-2x slower than W @ x.T there (MKL on AMD).

So the paths are measured, not assumed: specdec/compute/probe.py times each candidate on this
CPU for each token-count bucket and the fastest wins (a `Policy`).

Exactness: every path computes each token's row from that token's activations alone (no
per-batch activation quantization, no batch-dependent scaling), so a token's result does not
depend on the other tokens in the pass and speculation stays lossless. Paths differ from each
other only in float summation order, as F.linear itself does between 1 and 8 tokens.

The policy belongs to a model (`build_model(..., kernels=policy)`; specdec.load resolves it,
specdec/compute/choice.py): two decoders in one process each run their own. A model built
without one (tests, tools) computes with F.linear, exactly as transformers does.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PLAIN_KINDS = ("bfloat16", "float32")
SCRATCH_ELEMENTS = 1 << 22  # float32 scratch for upcasting bf16 weights: 16 MB, in row chunks
CACHE_VERSION = 1  # of Policy.as_dict(), the probe cache's format


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
@dataclass(frozen=True)
class Policy:
    """kind -> bucket -> path name, the probe's figures (ms per call on its weight shape), and
    the machine they were measured on (specdec/compute/probe.py's fingerprint)."""
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


REFERENCE = Policy.reference()
# The policy of the model whose forward is running in this context (thread, and the forward
# nested in it: a draft's forward run while the target waits for a layer). Each model holds
# its own policy and sets it for its forward only (`using`); outside any forward: REFERENCE.
_current: ContextVar[Policy] = ContextVar("specdec_kernel_policy", default=REFERENCE)


@contextmanager
def using(policy: Policy) -> Iterator[None]:
    """linear() follows `policy` inside the block (in this context only)."""
    token = _current.set(policy)
    try:
        yield
    finally:
        _current.reset(token)


def linear(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    """A plain weight's linear by the running model's policy (x and w share a dtype, as for
    F.linear)."""
    kind = "bfloat16" if w.dtype == torch.bfloat16 else "float32" if w.dtype == torch.float32 else None
    if kind is None or x.dtype != w.dtype:
        return F.linear(x, w, bias)
    n = x.numel() // x.shape[-1]
    return PATHS[_current.get().path(kind, n)](x, w, bias)
