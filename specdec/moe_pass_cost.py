"""What verifying more tokens costs a mixture-of-experts target in expert reads, learned from
its passes.

A pass of T tokens reads the union of the experts they route to, per layer. With independent
routing that union is N(1 - (1 - k/N)^T); neighbouring tokens share experts, so it is smaller.
The union is modelled as independent routing of T_eff = 1 + r(T - 1) tokens, r in [0, 1]
measured from each pass of 2..MAX_TOKENS tokens (r = 1: independent, r = 0: every token of a
pass routes like the first). Of the union, the share the expert cache does not hold is read,
at the seconds per byte the expert reads took. So the extra seconds of a T-token pass over a
1-token one are

    layers x (u(T) - u(1)) x miss share x bytes per expert x seconds per byte.

The chain and tree cost models add these to their fitted pass time (speculate/pass_time.py's
PassCurve growth) and fit the rest, so a drafted token is verified only while what it is
expected to bring is worth the experts it makes the pass read. The engine feeds every pass's
token count and expert counters (specdec/moe_stats.py's keys) to `observe`. Expert compute
is not modelled here: the fit's slope learns it.
"""
from __future__ import annotations

import math

from .speculate.pass_time import PassCurve

MAX_TOKENS = 64  # passes up to this size teach r (a long prompt's union says little about drafts)
DEFAULT_SECONDS_PER_BYTE = 1e-9  # 1 GB/s, a slow laptop SSD, until the first expert read is timed
DECAY = 0.9  # weight of the past in each running estimate


class Running:
    """An exponentially weighted mean of observations, `prior` until the first one."""

    def __init__(self, prior: float, decay: float = DECAY):
        self.value, self.decay, self.weight = prior, decay, 0.0

    def add(self, x: float, weight: float = 1.0) -> None:
        self.weight = self.decay * self.weight + weight
        self.value += (x - self.value) * weight / self.weight


class ExpertPassCost:
    def __init__(self, experts: int, routed: int, expert_nbytes: float, layers: int):
        if not 0 < routed <= experts:
            raise ValueError(f"routed experts per token must be in 1..{experts}, got {routed}")
        self.experts, self.routed, self.expert_nbytes = experts, routed, expert_nbytes
        self.correlation = Running(1.0)  # r: independent routing until measured (the upper bound)
        self.miss_share = Running(1.0)  # nothing cached until measured
        self.seconds_per_byte = Running(DEFAULT_SECONDS_PER_BYTE)
        self.layers = Running(float(layers))  # layers whose experts a pass reads
        self.passes = 0

    def union(self, tokens: int) -> float:
        """Expected distinct experts per layer for a pass of `tokens` tokens."""
        t_eff = 1 + self.correlation.value * (max(tokens, 1) - 1)
        return self.experts * (1 - (1 - self.routed / self.experts) ** t_eff)

    def bytes_per_pass(self, tokens: int) -> float:
        """Expected expert bytes read by a pass of `tokens` tokens."""
        return self.layers.value * self.union(tokens) * self.miss_share.value * self.expert_nbytes

    def extra_seconds(self, tokens: int) -> float:
        """Expected seconds of expert reads a pass of `tokens` tokens costs over a 1-token pass."""
        return max(self.bytes_per_pass(tokens) - self.bytes_per_pass(1), 0.0) * self.seconds_per_byte.value

    def observe(self, tokens: int, counters: dict[str, float]) -> None:
        """A pass of `tokens` tokens changed the expert counters by `counters`."""
        layers, used = counters.get("expert_layers", 0), counters.get("experts_used", 0)
        if not layers or not used:
            return
        self.passes += 1
        self.layers.add(layers)
        self.miss_share.add(counters.get("experts_read", 0) / used)
        nbytes = counters.get("expert_bytes_read", 0)
        if nbytes:
            self.seconds_per_byte.add(counters.get("expert_read_seconds", 0.0) / nbytes)
        if 1 < tokens <= MAX_TOKENS:
            self.correlation.add(self._correlation(tokens, used / layers))

    def _correlation(self, tokens: int, union: float) -> float:
        """The r that makes union(tokens) equal the measured mean union per layer."""
        n, k = self.experts, self.routed
        if k == n:
            return 1.0  # every expert routed: the union says nothing
        share = min(max(union, k), n - 0.5) / n
        t_eff = math.log(1 - share) / math.log(1 - k / n)
        return min(max((t_eff - 1) / (tokens - 1), 0.0), 1.0)


def expert_pass_cost(weights, args) -> ExpertPassCost | None:
    """The cost model for a target whose weight source reads experts as routed (None for a
    dense target, or one whose experts are all in RAM)."""
    if not getattr(weights, "streams_experts", False):
        return None
    store = weights.store
    nbytes = sum(x.nbytes for x in store.expert_extents(0)) / len(store.expert_extents(0))
    return ExpertPassCost(args.num_experts, args.experts_per_token, nbytes, store.num_layers)


def pass_curve(profile, cost: ExpertPassCost | None):
    """What the speculation's cost models start from: the probe's curve (`profile`, a
    compute.profile.Profile or None) and, for a MoE target, its expert reads' growth."""
    matmul = profile.seconds if profile is not None else None
    return matmul if cost is None else PassCurve(matmul, cost.extra_seconds)
