"""How long a chain to draft: before the pass, whether to draft at all (the length with the most
expected tokens per second from the acceptance measured per depth); while the chain is
drafted, one more token at a time for as long as its expected gain pays its cost
(speculate/acceptance.py for the rates). Imports no model.

A chain of k drafts yields E(k) = 1 + sum_{j<=k} prod_{d<=j} a_d tokens, where a_d is the
chance the target takes draft d once it took drafts 1..d-1, and costs T_target(k + 1) +
k * T_draft. Acceptance conditional on the earlier drafts being right rises with depth, so
one rate for every position sizes chains too short.

Once j tokens are drafted, the chance that the target takes all of them (their reach) comes
from the draft's own probability of each (calibrated online: the hit rate measured for
tokens of that draft probability and depth). Drafting m more adds reach * (a_{j+1} + a_{j+1}
a_{j+2} + ...) expected tokens for m draft tokens and m more verified positions. That pays
when it beats what those seconds earn on average: the long-run tokens per second R, measured
over the recent passes (maximising tokens - R * seconds per pass maximises the long-run rate).
So a chain stops right after a token the draft was unsure of (its reach fell) and runs on
while the draft is sure, further the cheaper a draft token is against a pass.
"""
from __future__ import annotations

from typing import Callable

from .acceptance import ChainAcceptance
from .backoff import Backoff
from .pass_time import PassTimeFit

# Until a draft token has been timed, one is assumed to cost this share of a one-token target
# pass (the pass-time estimate's, from the probe's curve where there is one). Assumed free,
# the first chain ran to k_max (15 drafts) whatever the draft cost; a tenth keeps it to 2-3
# tokens at the prior acceptance. Cautious: beside a streamed target a draft token costs ~1%
# of a pass (docs/benchmarks.md). The first timed draft tokens replace it.
DRAFT_COST_PRIOR = 0.1


class DraftLengthPolicy:
    """Chooses the chain length per pass, 0 (plain decoding) included.

    T_target(n) is fit from measured passes on top of the probe's kernel curve for this CPU
    (speculate/pass_time.py: on q4 weights, or bf16 without bf16 instructions, the matmuls
    grow with the tokens and long chains get dear), T_draft is measured (the strategy passes
    it in). When 0 wins, drafting does not pay on this machine at this acceptance: the chain
    decodes plainly (never slower than plain) and drafts one pass in every `recheck_every`
    to look again (speculate/backoff.py). A fixed k skips all this.
    """

    def __init__(self, k: int | None = None, k_max: int = 16, k_start: int = 4, decay: float = 0.98,
                 profile=None, recheck_every: int = 8, memory: float = 0.95):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"k must be an integer >= 0 (0 = plain decoding), got {k!r}")
        self.fixed = k
        self.k_max = k_max
        self.model = ChainAcceptance(decay)
        self.pass_time = PassTimeFit(profile=profile)
        self.backoff = Backoff(recheck_every)
        self.measured_draft_seconds = 0.0  # 0: no draft token timed yet
        self.rate = LongRunRate(memory)
        self.k = k if k is not None else k_start
        if k is None and profile is not None:
            # First passes sized by this CPU's kernel curve and the draft cost's prior.
            self.k = max(1, self._best(self.draft_seconds))

    @property
    def acceptance(self) -> float:
        """The overall rate: P(a drafted token is taken | the ones before it were)."""
        return self.model.overall

    @property
    def draft_seconds(self) -> float:
        """Seconds of one draft token: measured, else the prior (DRAFT_COST_PRIOR)."""
        return self.measured_draft_seconds or DRAFT_COST_PRIOR * self.pass_time.seconds(1)

    @property
    def target_seconds(self) -> float:
        """Estimated seconds of a pass at the current k."""
        return self.pass_time.seconds(self.k + 1)

    def update(self, drafted: int, accepted: int, target_seconds: float, draft_seconds: float,
               tokens: int | None = None, confidences: list[float] | None = None) -> int:
        """Record a pass that verified `tokens` (default drafted + 1) in `target_seconds`, of
        whose `drafted` drafts (the draft's probabilities of them: `confidences`) the target
        took `accepted`; returns the next pass's planned k."""
        self.model.observe(drafted, accepted, confidences)
        self.pass_time.observe(drafted + 1 if tokens is None else tokens, target_seconds)
        if draft_seconds > 0:  # 0: no draft token timed yet (the prior stays)
            self.measured_draft_seconds = draft_seconds
        self.rate.observe(accepted + 1, target_seconds + drafted * self.draft_seconds)
        if self.fixed is None:
            self.k = self._next_k()
        return self.k

    def keep_drafting(self, confidences: list[float], limit: int) -> bool:
        """The chain holds drafts with these draft probabilities: is one more (up to `limit`
        in all) worth its cost? Always for a fixed k, up to k."""
        j = len(confidences)
        if j >= limit or self.fixed is not None:
            return j < limit
        reach = 1.0
        for depth, confidence in enumerate(confidences, start=1):
            reach *= self.model.drafted(depth, confidence)
        rate = self.rate.value(self._expected_rate)
        base, draft = self.pass_time.seconds(j + 1), self.draft_seconds
        return more_pays(reach, self.model.at_depth, j, limit, rate,
                         lambda m: self.pass_time.seconds(j + 1 + m) - base + m * draft)

    def _expected_rate(self) -> float:
        """Tokens per second of the best length by the per-depth rates (before any pass)."""
        cost = self._cost(self.draft_seconds)
        k, tokens, reach = self._best(self.draft_seconds), 1.0, 1.0
        for depth in range(1, k + 1):
            reach *= self.model.at_depth(depth)
            tokens += reach
        return tokens / max(cost(k), 1e-9)

    def _next_k(self) -> int:
        best = self._best(self.draft_seconds)
        if not self.backoff.draft(best > 0):
            return 0
        return best if best > 0 else max(1, self._best(self.draft_seconds, k_min=1))  # look again

    def _best(self, draft_seconds: float, k_min: int = 0) -> int:
        return best_length(self.model.at_depth, self._cost(draft_seconds), k_min, self.k_max)

    def _cost(self, draft_seconds: float) -> Callable[[int], float]:
        return lambda k: self.pass_time.seconds(k + 1) + k * draft_seconds

    def best_k(self, a: float, t_target, t_draft: float, k_min: int = 0) -> int:
        """The best k for one acceptance `a` at every depth (see best_draft_length)."""
        return best_draft_length(a, t_target, t_draft, k_min, self.k_max)


def best_length(acceptance: Callable[[int], float], seconds: Callable[[int], float], k_min: int,
                k_max: int, drafted: int = 0, reach: float = 1.0, tokens: float = 1.0) -> int:
    """The chain length in [max(k_min, drafted), k_max] with the most expected tokens per
    second: `seconds(k)` for a pass with k drafts, `acceptance(d)` the rate of draft d once
    the ones before it were taken. `drafted` drafts exist already: all of them are taken with
    probability `reach`, and a pass ending after them yields `tokens` expected tokens."""
    best, best_rate = None, 0.0
    for k in range(drafted, k_max + 1):
        if k > drafted:
            reach *= acceptance(k)
            tokens += reach
        rate = tokens / max(seconds(k), 1e-9)
        if k >= k_min and (best is None or rate > best_rate):
            best, best_rate = k, rate
    return drafted if best is None else best


def best_draft_length(a: float, t_target, t_draft: float, k_min: int, k_max: int) -> int:
    """The k in [k_min, k_max] with the most expected tokens per second for per-token
    acceptance `a` at every depth: E(k) = (1 - a^(k+1)) / (1 - a) tokens for a pass verifying
    k + 1 tokens in t_target(k + 1) seconds (or a number: the same for every k) plus k * t_draft."""
    a = min(a, 0.999)
    pass_seconds = t_target if callable(t_target) else (lambda n: t_target)
    return best_length(lambda depth: a, lambda k: pass_seconds(k + 1) + k * t_draft, k_min, k_max)


def more_pays(reach: float, acceptance: Callable[[int], float], drafted: int, limit: int,
              rate: float, extra_seconds: Callable[[int], float]) -> bool:
    """Whether drafting on after `drafted` drafts, all taken with probability `reach`, pays:
    for some m in 1..limit - drafted, the expected tokens m more drafts add (`acceptance(d)`:
    the rate of draft d once the ones before it were taken) exceed what their
    `extra_seconds(m)` would earn at the long-run `rate` (tokens per second)."""
    gain = 0.0
    for m in range(1, limit - drafted + 1):
        reach *= acceptance(drafted + m)
        gain += reach
        if gain > rate * extra_seconds(m):
            return True
    return False


class LongRunRate:
    """Tokens per second over the recent passes (decayed sums of tokens and seconds, each
    pass's seconds the target's plus its drafting), the yardstick a draft token's expected
    gain must beat. Until a pass is seen, an estimate from the model."""

    def __init__(self, memory: float = 0.95):
        if not 0 < memory < 1:
            raise ValueError(f"memory must be in (0, 1), got {memory!r}")
        self.memory = memory
        self.tokens = self.seconds = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        self.tokens = self.memory * self.tokens + tokens
        self.seconds = self.memory * self.seconds + max(seconds, 0.0)

    def value(self, estimate: Callable[[], float]) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else estimate()
