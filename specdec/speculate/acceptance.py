"""How often the target takes a drafted token, measured as decoding goes, by what is known of
the token when the draft proposes it: its depth in the draft (acceptance conditional on the
earlier drafts being right rises with depth: once on track, the draft stays on track) and the
draft's own confidence (its probability of the token). Pure: imports no model.

Estimates are running hit rates with exponential forgetting (per observation, or for the
chain per pass), kept per key and shrunk toward
a more general key's rate (a depth or confidence seen rarely starts at the overall rate and
moves as it is measured), so sparse keys neither start at 0 nor at 1.
"""
from __future__ import annotations

# Draft confidence bins: a token's bin is the number of edges its probability reaches.
CONFIDENCE_EDGES = (0.3, 0.5, 0.7, 0.85, 0.95)
# Depth groups for keys that also carry a confidence bin (deep positions are rarer).
DEPTH_GROUPS = (1, 2, 4)


def confidence_bin(probability: float) -> int:
    return sum(probability >= edge for edge in CONFIDENCE_EDGES)


def depth_group(depth: int) -> int:
    return sum(depth > edge for edge in DEPTH_GROUPS)


class HitRates:
    """Decayed (hits, trials) per key. `rate(keys, prior)`: the rate of the last, most specific
    key, each key's estimate shrunk toward the one before it (the first toward `prior`) with
    the weight of `weight` trials."""

    def __init__(self, decay: float = 0.9, weight: float = 2.0):
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        self.decay, self.weight = decay, weight
        self._counts: dict[tuple, tuple[float, float]] = {}

    def observe(self, key: tuple, hit: bool) -> None:
        hits, trials = self._counts.get(key, (0.0, 0.0))
        self._counts[key] = (self.decay * hits + hit, self.decay * trials + 1)

    def rate(self, keys: list[tuple], prior: float) -> float:
        rate = prior
        for key in keys:
            hits, trials = self._counts.get(key, (0.0, 0.0))
            rate = (hits + self.weight * rate) / (trials + self.weight)
        return min(max(rate, 1e-3), 0.999)

    def age(self, decay: float) -> None:
        """Forget every key's counts by `decay` (e.g. once per pass)."""
        self._counts = {key: (decay * h, decay * n) for key, (h, n) in self._counts.items()}

    def trials(self, key: tuple) -> float:
        return self._counts.get(key, (0.0, 0.0))[1]


class ChainAcceptance:
    """P(the target takes drafted token d | it took tokens 1..d-1), per depth, and the same
    for a token whose draft confidence is known. A weak prior of 0.5 until measured."""

    def __init__(self, decay: float = 0.95, prior: float = 0.5):
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        self.rates = HitRates(decay=1.0)
        self.decay, self.prior = decay, prior

    def at_depth(self, depth: int) -> float:
        """For a token not drafted yet (its confidence unknown)."""
        return self.rates.rate([("all",), ("depth", depth)], self.prior)

    def drafted(self, depth: int, confidence: float) -> float:
        """For a drafted token whose draft probability is `confidence`."""
        b = confidence_bin(confidence)
        return self.rates.rate([("all",), ("conf", b), ("conf", b, depth_group(depth))], self.prior)

    def observe(self, drafted: int, accepted: int, confidences: list[float] | None = None) -> None:
        """A verified chain of `drafted` tokens: the target took the first `accepted` and
        refused the next (if there was one); tokens after a refusal were never tested.
        `confidences`: the draft's probability of each token (None: not known).
        Every key forgets by the pass, measured or not: a depth or confidence the chain
        stopped reaching (because it was measured low) drifts back to the general rate,
        so it is tried again instead of staying low for ever."""
        self.rates.age(self.decay)
        for i in range(min(accepted + 1, drafted)):
            depth, hit = i + 1, i < accepted
            keys = [("all",), ("depth", depth)]
            if confidences is not None:
                b = confidence_bin(confidences[i])
                keys += [("conf", b), ("conf", b, depth_group(depth))]
            for key in keys:
                self.rates.observe(key, hit)

    @property
    def overall(self) -> float:
        return self.rates.rate([("all",)], self.prior)
