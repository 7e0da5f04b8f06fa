"""An exponential moving average of measured times: one helper for every timing estimate."""
from __future__ import annotations


class Ema:
    """The first sample sets the value; each later one moves it `weight` of the way."""

    def __init__(self, weight: float = 0.2):
        self.weight = weight
        self.value = 0.0

    def update(self, sample: float) -> float:
        v = self.value
        self.value = sample if v == 0 else (1 - self.weight) * v + self.weight * sample
        return self.value
