"""Whether drafting pays at all, decided by measurement (tree and overlapped tree).

A drafted pass costs the draft's forwards plus a wider target pass; where the target's
matmuls grow with the tokens (q4 weights, or bf16 without bf16 instructions) and the draft
agrees rarely, that can be slower than plain decoding. The gate compares the drafted passes'
measured tokens per second (their draft time included, an EMA) with a plain pass's estimated
rate (the cost model's one-token pass). When plain is faster, the strategy decodes plainly
(no draft forward at all) for `recheck_every` passes, then drafts one pass to look again:
acceptance and costs move with the text and the machine. The chain does the same inside its
own cost model (DraftLengthPolicy, k = 0).
"""
from __future__ import annotations

from .ema import Ema


class DraftGate:
    def __init__(self, recheck_every: int = 8, weight: float = 0.3):
        self.recheck_every = recheck_every
        self.rate = Ema(weight)  # tokens per second of drafted passes
        self._plain_left = 0

    def should_draft(self) -> bool:
        """Call once per pass: False while a plain stretch lasts."""
        if self._plain_left > 0:
            self._plain_left -= 1
            return False
        return True

    def observe(self, tokens: int, seconds: float, plain_seconds: float) -> None:
        """A drafted decode pass gave `tokens` in `seconds` (draft work included); a plain pass
        would take about `plain_seconds` for one token."""
        rate = self.rate.update(tokens / max(seconds, 1e-9))
        if rate * plain_seconds < 1.0:
            self._plain_left = self.recheck_every

    @property
    def plain(self) -> bool:
        return self._plain_left > 0
