"""How much prompt lookup to offer, and how often the target takes it, per match length
(the suffix's length in tokens: a 4-token match continues alike far more often than a
1-token one). Used by the lookup strategy (speculate/lookup.py) and by the lookup branches
of a draft tree (speculate/lookup_branches.py). Imports no model."""
from __future__ import annotations

from .backoff import BackoffPerKey
from .chain_policy import best_draft_length
from .pass_time import PassTimeFit


class LookupPolicy:
    """Nodes to offer for a match of a given order (suffix length): a fixed `k`, or the
    count with the best expected tokens per second (chain_policy.best_draft_length) at that order's
    measured per-token acceptance, with exponential forgetting (`decay` per drafted pass).
    A lookup costs no draft forwards, so only the wider pass is weighed. When offering
    nothing wins at an order, one token is offered in every `recheck_every` such passes to
    measure again (speculate/backoff.py: text moves between quoting and not)."""

    def __init__(self, k: int | None = None, k_max: int = 16, decay: float = 0.9, profile=None,
                 recheck_every: int = 8):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"k (lookup tokens per pass) must be an integer >= 0, got {k!r}")
        self.fixed = k
        self.k_max = k_max
        self.decay = decay
        self.pass_time = PassTimeFit(profile=profile)
        self.backoff = BackoffPerKey(recheck_every)  # per order
        self._taken: dict[int, float] = {}   # order -> decayed accepted lookup tokens
        self._missed: dict[int, float] = {}  # order -> decayed passes that ended on a rejection

    def acceptance(self, order: int) -> float:
        """P(the target takes a lookup token | the one before was taken), at this order; a
        weak prior of 0.5 until measured."""
        taken, missed = self._taken.get(order, 1.0), self._missed.get(order, 1.0)
        return taken / (taken + missed)

    def size(self, order: int) -> int:
        if self.fixed is not None:
            return self.fixed
        best = best_draft_length(self.acceptance(order), self.pass_time.seconds, 0.0, 0, self.k_max)
        if not self.backoff.draft(order, best > 0):
            return 0
        return max(best, 1)  # 1: offering nothing wins, but this pass looks again

    def observe(self, order: int, offered: int, accepted: int, rejected: bool, tokens: int,
                seconds: float) -> None:
        """A decode pass verified `tokens` in `seconds`; of `offered` lookup nodes from a
        match of `order`, the target took `accepted` and ended on a rejection or not."""
        self.pass_time.observe(tokens, seconds)
        if offered:
            self.observe_walk(order, accepted, rejected)

    def observe_walk(self, order: int, accepted: int, rejected: bool) -> None:
        """The target took `accepted` lookup tokens in a row from a match of `order`, then
        refused one (`rejected`) or ran past the offer."""
        self._taken[order] = self.decay * self._taken.get(order, 1.0) + accepted
        self._missed[order] = self.decay * self._missed.get(order, 1.0) + rejected
