"""How long a chain to draft: the length with the most expected tokens per second, from the
measured acceptance per depth and, while the chain is being drafted, the draft's confidence
in each token it drafted (speculate/acceptance.py). Imports no model.

A chain of k drafts yields E(k) = 1 + sum_{j<=k} prod_{d<=j} a_d tokens, where a_d is the
chance the target takes draft d once it took drafts 1..d-1, and costs T_target(k + 1) +
k * T_draft. Acceptance conditional on the earlier drafts being right rises with depth, so
one rate for every position sizes chains too short. Before drafting, a_d are the per-depth
rates; once token j is drafted, its own rate comes from the draft's probability of it (and
its depth), so the chain stops where the draft is unsure and runs on where it is sure.
"""
from __future__ import annotations

from typing import Callable

from .acceptance import ChainAcceptance
from .backoff import Backoff
from .pass_time import PassTimeFit


class DraftLengthPolicy:
    """Chooses the chain length per pass, 0 (plain decoding) included.

    T_target(n) is fit from measured passes on top of the probe's kernel curve for this CPU
    (speculate/pass_time.py: on q4 weights, or bf16 without bf16 instructions, the matmuls
    grow with the tokens and long chains get dear), T_draft is measured (the strategy passes
    it in). When 0 wins, drafting does not pay on this machine at this acceptance: the chain
    decodes plainly (never slower than plain) and drafts one pass in every `recheck_every`
    to look again (speculate/backoff.py). A fixed k skips all this.
    """

    def __init__(self, k: int | None = None, k_max: int = 16, k_start: int = 4, decay: float = 0.95,
                 profile=None, recheck_every: int = 8):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"k must be an integer >= 0 (0 = plain decoding), got {k!r}")
        self.fixed = k
        self.k_max = k_max
        self.model = ChainAcceptance(decay)
        self.pass_time = PassTimeFit(profile=profile)
        self.backoff = Backoff(recheck_every)
        self.draft_seconds = 0.0
        self.k = k if k is not None else k_start
        if k is None and profile is not None:
            # First passes sized by this CPU's kernel curve (draft cost unknown yet: 0).
            self.k = max(1, self._best(0.0))

    @property
    def acceptance(self) -> float:
        """The overall rate: P(a drafted token is taken | the ones before it were)."""
        return self.model.overall

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
        self.draft_seconds = draft_seconds
        if self.fixed is None:
            self.k = self._next_k()
        return self.k

    def keep_drafting(self, confidences: list[float], limit: int) -> bool:
        """The chain holds drafts with these draft probabilities: is one more (up to `limit`
        in all) worth its cost? Always for a fixed k, up to k."""
        j = len(confidences)
        if j >= limit or self.fixed is not None:
            return j < limit
        reach, tokens = 1.0, 1.0
        for depth, confidence in enumerate(confidences, start=1):
            reach *= self.model.drafted(depth, confidence)
            tokens += reach
        return best_length(self.model.at_depth, self._cost(self.draft_seconds), 0, limit,
                           drafted=j, reach=reach, tokens=tokens) > j

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
