"""What a target pass costs as a function of the tokens it verifies, learned as we go.

Both strategies size their speculation with it: the chain's k (DraftLengthPolicy) and the
tree's node count (TreeCostModel). The slope is what matters and it depends on the CPU: on a
bf16 target streamed from disk with bf16 instructions a pass of 64 tokens costs about what 1
costs (the read dominates), but without them (AVX2), or on q4 weights (torch's int4 kernel),
the matmuls grow with the tokens and speculating wide stops paying sooner.

The fit is seconds(n) = a + b * c(n), least squares over the kept passes (the last `history`)
whose sizes are near n (half to twice it; all of them where fewer than two sizes are near),
never below c(n) (past the largest of those passes: that pass's price until c(n) outgrows
it, as with one size), where c(n) is the probe's estimate of the pass's matmul seconds at n tokens
on this CPU (specdec.compute.profile.Profile): b starts at 1 (the probe is right about the
matmuls) and a is what the matmuls do not explain (the read not hidden behind them, attention,
Python). Near, because a streamed pass is flat in its tokens while the read hides the matmuls
and then grows: a prompt's first pass, which is compute-bound, must not set the price of a
decode pass. So the very
first passes are sized by this machine's measured kernel curve, not by a guess, and later
passes by what they really cost. Without a profile (a model the probe cannot describe) c(n)
is n and, until two sizes have been seen, a 256-token pass is assumed to cost twice a
1-token one (the bf16-on-AVX512 regime) until the first differently sized pass corrects it.

A known growth the fit should not have to learn from a few pass sizes (a mixture-of-experts
target reads more experts the more tokens a pass verifies: specdec/moe_pass_cost.py) comes in
a PassCurve: it is taken off each measured pass before the fit and added to its estimates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class PassCurve:
    """The profile with a growth term: `matmul(n)` the probe's curve (None: not probed),
    `growth(n)` the seconds a pass of n tokens costs over a 1-token pass for a known reason."""
    matmul: Callable[[int], float] | None = None
    growth: Callable[[int], float] | None = None


class PassTimeFit:
    def __init__(self, history: int = 32, profile: Callable[[int], float] | PassCurve | None = None):
        self.samples: list[tuple[int, float]] = []
        self.history = history
        curve = profile if isinstance(profile, PassCurve) else PassCurve(profile)
        self.profile, self.growth = curve.matmul, curve.growth or (lambda tokens: 0.0)

    def observe(self, tokens: int, seconds: float) -> None:
        seconds = max(seconds - self.growth(tokens), 1e-9)
        self.samples = (self.samples + [(tokens, seconds)])[-self.history:]

    def measured(self, tokens: int) -> bool:
        """Whether a kept pass is near `tokens` in size (half to twice it, +-2), so its price
        comes from measurement rather than from passes of other sizes."""
        return any(_is_near(n, tokens) for n, _ in self.samples)

    def x(self, tokens: int) -> float:
        """The fit's abscissa: the probe's matmul seconds for `tokens`, or the tokens."""
        return self.profile(tokens) if self.profile is not None else float(tokens)

    def seconds(self, tokens: int) -> float:
        return self._fitted(tokens) + self.growth(tokens)

    def _fitted(self, tokens: int) -> float:
        if self.profile is not None and len({n for n, _ in self.samples}) == 1:
            # One size seen: a streamed pass reads while it computes, so more tokens cost
            # nothing until the probe's matmul time passes the measured pass; past that they
            # cost the matmuls. (Adding the matmul growth to the measured pass instead made
            # the first passes on a slow disk far too cautious.) Two sizes switch to the fit.
            measured = sum(y for _, y in self.samples) / len(self.samples)
            return max(measured, self.x(tokens))
        near = self._near(tokens)
        a, b = self.fit(near)
        if self.profile is None:
            return a + b * self.x(tokens)
        top = max((n for n, _ in near), default=tokens)
        if tokens > top:
            # Past the largest pass measured near it, as with one size: the matmuls hide
            # behind the read until they outgrow the largest measured pass. A line through a
            # few small, noisy passes (a +-0.3 s disk) extrapolated their noise as a slope:
            # at seed-13b (2026-12-07) it priced 16 tokens 0.6 s over 8 where they cost
            # ~0.1 s, the tree stayed at ~4 nodes and never measured a larger pass. Larger
            # trees measure what they cost, and the line then prices them.
            return max(a + b * self.x(top), self.x(tokens))
        # ... and no pass is faster than its matmuls
        return max(a + b * self.x(tokens), self.x(tokens))

    def _near(self, tokens: int) -> list[tuple[int, float]]:
        """The passes whose sizes are near `tokens` (half to twice it, +-2), where at least two
        sizes are; else all of them. A streamed pass is flat while the read hides its matmuls
        and grows once they outgrow it: no one line follows that, and a line through every pass
        takes its slope from the largest (a prompt's first pass: the whole prompt, compute-bound).
        At seed-13b (2026-12-07) such a line priced a 16-token decode pass at 3.1-3.3 s where
        13-19-token passes took 2.4-2.6 s, and the tree drafted ~4 nodes where 16 were 20%
        faster (docs/benchmarks.md)."""
        near = [(n, y) for n, y in self.samples if _is_near(n, tokens)]
        return near if len({n for n, _ in near}) >= 2 else self.samples

    def fit(self, samples: list[tuple[int, float]] | None = None) -> tuple[float, float]:
        """(a, b): seconds of a pass of n tokens = a + b * x(n), by least squares over
        `samples` (default: every pass kept)."""
        samples = self.samples if samples is None else samples
        profiled = self.profile is not None
        if not samples:
            return (self.x(1), 1.0) if profiled else (1.0, 1.0 / 256)
        xs = [self.x(n) for n, _ in samples]
        ys = [y for _, y in samples]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mean_x) ** 2 for x in xs)
        if var <= 1e-12 * max(mean_x * mean_x, 1e-12):
            if profiled:  # one size seen: trust the probe's slope, learn the offset
                return max(mean_y - mean_x, 1e-6), 1.0
            a = mean_y / (1 + mean_x / 256)  # assume a 256-token pass costs twice a 1-token one
            return a, a / 256
        b = max(sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var, 0.0)
        return max(mean_y - b * mean_x, 1e-6), b


def _is_near(size: int, tokens: int) -> bool:
    return tokens / 2 - 2 <= size <= 2 * tokens + 2
