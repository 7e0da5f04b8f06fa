"""Read a mixture-of-experts layer's routed experts, only those a pass routes to.

A streamed layer's dense part (attention, norms, router, shared expert) arrives through the
prefetch ring as any layer does (offload/prefetch.py). Its experts do not: the layer's dict
carries a `LayerExperts` under `expert_names.EXPERT_SOURCE`, and once the model's router has
run for the pass's tokens it asks for the union of their experts. The missing ones are read
from the layer's experts file (format version 3: one aligned extent per expert) into a pool
of buffers, all reads issued together (DirectReader.read_ranges, O_DIRECT), and handed back as
zero-copy views. The buffers are an LRU cache (offload/expert_cache.py): an expert still in one
is not read again. A union larger than the pool comes in batches of the pool's size, in
ascending expert order; a batch's views are valid until the next batch is asked for.

Counters (StreamStats): expert_bytes_read, experts_read (extents read from disk), experts_used
(distinct experts per layer, summed over the pass's layers), expert_layers (the layers that
asked: experts_used / expert_layers is the mean union per layer), expert_cache_hits and
expert_read_seconds.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

from .expert_names import EXPERT_SOURCE
from .expert_cache import ExpertPool
from .format import Store, check_expert_first_read
from .reader import DirectReader, tensor_views

DEFAULT_SLOTS_PER_ROUTED = 2  # slot buffers per routed expert (num_experts_per_tok)


def default_expert_slots(store: Store) -> int:
    """Enough slots for one token's experts twice over (a short verification pass in one batch)."""
    if not store.has_experts:
        return 0
    total = len(store.expert_extents(0))
    routed = store.config.get("num_experts_per_tok") or 1
    return max(1, min(total, DEFAULT_SLOTS_PER_ROUTED * int(routed)))


class ExpertReader:
    """The expert buffers (an LRU cache, offload/expert_cache.py) and the reader every
    streamed layer's experts go through. `buffers`: read buffers plus cache, one expert each."""

    def __init__(self, store: Store, buffers: int, stats, lock: threading.Condition,
                 convert: Callable[[dict], dict]):
        self.store, self.stats, self.lock, self.convert = store, stats, lock, convert
        self.pool = ExpertPool(buffers, store.max_expert_nbytes)
        self.reader = DirectReader()

    @property
    def buffer_nbytes(self) -> int:
        return self.pool.nbytes

    def layer(self, i: int) -> "LayerExperts":
        return LayerExperts(self, i)

    def batches(self, layer: int, ids: list[int]) -> Iterator[list[tuple[int, dict]]]:
        """(expert, {part: tensor}) for `ids` (ascending), at most len(pool) per batch."""
        with self.lock:
            self.stats.experts_used += len(ids)
            self.stats.expert_layers += 1
        size = len(self.pool)
        for start in range(0, len(ids), size):
            chunk = ids[start:start + size]
            where, misses = self.pool.assign(layer, chunk)
            try:
                self._read(layer, {e: where[e] for e in misses})
            except BaseException:
                self.pool.forget(layer, misses)
                raise
            with self.lock:
                self.stats.expert_cache_hits += len(chunk) - len(misses)
            yield [(e, self._views(layer, e, self.pool.buffers[where[e]])) for e in chunk]

    def _read(self, layer: int, buffers: dict[int, int]) -> None:
        if not buffers:
            return
        extents = self.store.expert_extents(layer)
        ranges = [(self.pool.buffers[b], extents[e].offset, extents[e].nbytes) for e, b in buffers.items()]
        t0 = time.perf_counter()
        nbytes = self.reader.read_ranges(self.store.expert_file(layer), ranges)
        for e, b in buffers.items():
            check_expert_first_read(self.store, layer, e, self.pool.buffers[b])
        with self.lock:
            self.stats.bytes_read += nbytes
            self.stats.expert_bytes_read += nbytes
            self.stats.experts_read += len(buffers)
            seconds = time.perf_counter() - t0
            self.stats.read_seconds += seconds
            self.stats.expert_read_seconds += seconds

    def _views(self, layer: int, expert: int, buf) -> dict:
        return self.convert(tensor_views(buf, self.store.expert_extents(layer)[expert].tensors))

    def close(self) -> None:
        self.reader.close()


class LayerExperts:
    """What a streamed layer's dict holds under EXPERT_SOURCE: its experts, read on demand."""

    def __init__(self, source: ExpertReader, layer: int):
        self.source, self.layer = source, layer

    def batches(self, ids: list[int]) -> Iterator[list[tuple[int, dict]]]:
        return self.source.batches(self.layer, ids)


def with_experts(views: dict, source: ExpertReader | None, layer: int) -> dict:
    """A streamed layer's dense views, plus its experts' source when the store has experts."""
    if source is None:
        return views
    return {**views, EXPERT_SOURCE: source.layer(layer)}
