"""Whether drafting pays at all, decided by measurement (tree and overlapped tree).

A drafted pass costs the draft's forwards plus a wider target pass; where the target's
matmuls grow with the tokens (q4 weights, or bf16 without bf16 instructions) and the draft
agrees rarely, that can be slower than plain decoding. The gate compares the drafted passes'
measured tokens per second (their draft time included, an EMA) with a plain pass's estimated
rate (the cost model's one-token pass). When plain is faster, the strategy decodes plainly
(no draft forward at all) and drafts one pass in every `recheck_every` to look again
(speculate/backoff.py). The chain does the same inside its own cost model
(DraftLengthPolicy, k = 0).

Until a pass of about one token has been measured, the plain rate is an extrapolation from
other sizes, and on a streamed target it can be far off: at seed-13b (2026-12-07) the fit
through the prompt's compute-bound first pass and one decode tree put a plain pass at the
probe's matmul time (0.2 s) where it takes the read (2.35 s), and the gate shut for seven of
a reply's first eighteen passes. So a verdict against drafting that rests on such a guess
buys one plain pass, which measures it, and the next drafted pass decides on the measurement.
"""
from __future__ import annotations

from .backoff import Backoff
from .ema import Ema


class DraftGate:
    def __init__(self, recheck_every: int = 8, weight: float = 0.3):
        self.rate = Ema(weight)  # tokens per second of drafted passes
        self.backoff = Backoff(recheck_every)
        self._pays = True
        self._measure_plain = False  # one plain pass to measure what plain costs

    def should_draft(self) -> bool:
        """Call once per pass: False while a plain stretch lasts."""
        if self._measure_plain:
            self._measure_plain = False
            return False
        return self.backoff.draft(self._pays)

    def observe(self, tokens: int, seconds: float, plain_seconds: float,
                plain_measured: bool = True) -> None:
        """A drafted decode pass gave `tokens` in `seconds` (draft work included); a plain pass
        would take about `plain_seconds` for one token, an estimate from passes of about that
        size if `plain_measured`, else an extrapolation from other sizes."""
        rate = self.rate.update(tokens / max(seconds, 1e-9))
        pays = rate * plain_seconds >= 1.0
        if not pays and not plain_measured:
            self._measure_plain = True  # measure before a stretch; drafting until then
            return
        self._pays = pays
