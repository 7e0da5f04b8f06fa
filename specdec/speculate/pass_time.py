"""What a target pass costs as a function of the tokens it verifies, learned as we go.

Fit as a + b * tokens (least squares over the last `history` passes). Both strategies size
their speculation with it: the chain's k (DraftLengthPolicy) and the tree's node count
(TreeCostModel). The slope matters: on a bf16 target streamed from disk a pass of 64 tokens
costs about what 1 costs (the read dominates, b ~ 0), but on q4 weights the int4 kernel is
compute-bound from ~16 tokens (DESIGN.md: 0.9x bf16 time at 16, 2-2.6x at 64-128), so b is
large and speculating wide stops paying sooner. A pass size never tried is extrapolated from
the line; until two sizes have been seen, a 256-token pass is assumed to cost twice a 1-token
one (the bf16 regime), and the first differently sized pass corrects that.
"""
from __future__ import annotations


class PassTimeFit:
    def __init__(self, history: int = 32):
        self.samples: list[tuple[int, float]] = []
        self.history = history

    def observe(self, tokens: int, seconds: float) -> None:
        self.samples = (self.samples + [(tokens, seconds)])[-self.history:]

    def seconds(self, tokens: int) -> float:
        a, b = self.fit()
        return a + b * tokens

    def fit(self) -> tuple[float, float]:
        """(a, b): seconds of a pass of n tokens = a + b * n."""
        if not self.samples:
            return 1.0, 1.0 / 256
        xs = [x for x, _ in self.samples]
        ys = [y for _, y in self.samples]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mean_x) ** 2 for x in xs)
        if var == 0:  # one size seen so far: assume a 256-token pass costs twice a 1-token one
            a = mean_y / (1 + mean_x / 256)
            return a, a / 256
        b = max(sum((x - mean_x) * (y - mean_y) for x, y in self.samples) / var, 0.0)
        return max(mean_y - b * mean_x, 1e-6), b
