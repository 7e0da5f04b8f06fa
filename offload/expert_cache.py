"""The buffers routed experts are read into, kept as a least-recently-used cache.

Every buffer holds one expert (of any layer). An expert asked for again while its buffer has
not been reused is a hit: no read. A miss takes the buffer of the expert used longest ago that
is not part of the batch being assembled. With as many buffers as one batch needs the pool is
just the read buffers; every buffer past that (the budget's leftover, offload/budget.py) is
cache. Recency, not frequency: with a few buffers per layer the experts a conversation keeps
routing to stay, and a burst of new ones pushes out the stale ones without a counter to age.
"""
from __future__ import annotations

from collections import OrderedDict

from .reader import aligned_buffer


class ExpertPool:
    def __init__(self, buffers: int, nbytes: int):
        if buffers < 1:
            raise ValueError(f"expert buffers must be >= 1, got {buffers}")
        self.buffers = [aligned_buffer(nbytes) for _ in range(buffers)]
        self._held: OrderedDict[tuple[int, int], int] = OrderedDict()  # (layer, expert) -> buffer
        self._free = list(range(buffers))

    def __len__(self) -> int:
        return len(self.buffers)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.buffers)

    def holds(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self._held

    def assign(self, layer: int, experts: list[int], keep: frozenset = frozenset()
               ) -> tuple[dict[int, int], list[int]]:
        """Buffers for `experts` of `layer` (at most len(self) of them): ({expert: buffer},
        the experts that are misses, whose buffers must now be read). All become most recent.
        `keep`: (layer, expert) keys whose buffers must not be taken (still in use or being read)."""
        if len(experts) + len(keep) > len(self.buffers):
            raise ValueError(f"{len(experts)} experts in one batch and {len(keep)} kept, "
                             f"{len(self.buffers)} buffers")
        wanted = {(layer, e) for e in experts} | keep
        out, misses = {}, []
        for e in experts:
            key = (layer, e)
            if key in self._held:
                self._held.move_to_end(key)
            else:
                self._held[key] = self._take(wanted)
                misses.append(e)
            out[e] = self._held[key]
        return out, misses

    def forget(self, layer: int, experts: list[int]) -> None:
        """Drop experts whose read failed: their buffers hold no valid bytes."""
        for e in experts:
            buf = self._held.pop((layer, e), None)
            if buf is not None:
                self._free.append(buf)

    def _take(self, keep: set) -> int:
        if self._free:
            return self._free.pop()
        victim = next(k for k in self._held if k not in keep)  # least recent first
        return self._held.pop(victim)
