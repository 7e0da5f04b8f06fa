"""What a pass of n tokens costs in matmuls for a model's linear weights, from the probe's
timings (specdec/compute/probe.py): where the cost models start, before any pass is measured."""
from __future__ import annotations

import torch

from .kernels import BUCKETS, Policy
from .probe import PROBE_SHAPE

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


def pass_profile(model) -> Profile | None:
    """The probe's matmul-seconds curve for one pass of `model`, or None when its kernel
    policy was not probed (then the cost models learn from passes alone)."""
    policy = model.kernels
    if not policy.timings:
        return None
    profile = Profile(policy, linear_elements(model))
    return profile if profile.known else None
