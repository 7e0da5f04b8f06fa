"""Whether drafting pays at all, decided by measurement (tree and overlapped tree).

A drafted pass costs the draft's forwards plus a wider target pass; where the target's
matmuls grow with the tokens (q4 weights, or bf16 without bf16 instructions) and the draft
agrees rarely, that can be slower than plain decoding. The gate compares the drafted passes'
measured tokens per second (their draft time included, an EMA) with a plain pass's estimated
rate (the cost model's one-token pass). When plain is faster, the strategy decodes plainly
(no draft forward at all) and drafts one pass in every `recheck_every` to look again
(speculate/backoff.py). The chain does the same inside its own cost model
(DraftLengthPolicy, k = 0).
"""
from __future__ import annotations

from .backoff import Backoff
from .ema import Ema


class DraftGate:
    def __init__(self, recheck_every: int = 8, weight: float = 0.3):
        self.rate = Ema(weight)  # tokens per second of drafted passes
        self.backoff = Backoff(recheck_every)
        self._pays = True

    def should_draft(self) -> bool:
        """Call once per pass: False while a plain stretch lasts."""
        return self.backoff.draft(self._pays)

    def observe(self, tokens: int, seconds: float, plain_seconds: float) -> None:
        """A drafted decode pass gave `tokens` in `seconds` (draft work included); a plain pass
        would take about `plain_seconds` for one token."""
        rate = self.rate.update(tokens / max(seconds, 1e-9))
        self._pays = rate * plain_seconds >= 1.0
