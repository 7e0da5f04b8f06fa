"""Read a mixture-of-experts layer's routed experts, only those a pass routes to.

A streamed layer's dense part (attention, norms, router, shared expert) arrives through the
prefetch ring as any layer does (offload/prefetch.py). Its experts do not: the layer's dict
carries a `LayerExperts` under `expert_names.EXPERT_SOURCE`, and once the model's router has
run for the pass's tokens it asks for the union of their experts. The missing ones are read
from the layer's experts file (format version 3: one aligned extent per expert) into a pool
of buffers, all reads submitted together as soon as the union is asked for
(offload/expert_reads.py), and handed back as zero-copy views, each when its read has ended:
the model computes the first experts while the later ones are still being read. The buffers
are an LRU cache (offload/expert_cache.py): an expert still in one is not read again. A union
larger than the pool comes in batches of the pool's size, in ascending expert order; a batch's
views are valid until the next batch is asked for.

Prefetch (optional): once a layer's reads are submitted, the experts a guess names for the next
layer are read into buffers the layer does not use (offload/expert_guess.py): the experts the
next layer routed the previous pass's last token to (`PreviousPass`), or those the next layer's
router picks from this layer's residual (`NextRouter`: the model computes it and hands it over
through `LayerExperts.read_ahead`). A guess only decides what is read early; the next layer
still asks for what its router chose, and a wrong guess costs the read and the buffer it took,
never a different output.

Counters (StreamStats): expert_bytes_read, experts_read (extents read from disk), experts_used
(distinct experts per layer, summed over the pass's layers), expert_layers (the layers that
asked: experts_used / expert_layers is the mean union per layer), expert_cache_hits,
expert_read_seconds (the consumer's waits), expert_prefetched (guessed experts read) and
expert_prefetch_used (of those, routed to by the layer they were read for).
"""
from __future__ import annotations

import threading
from typing import Callable, Iterable, Iterator

from .expert_cache import ExpertPool
from .expert_names import EXPERT_SOURCE
from .expert_reads import ExpertReads
from .format import Store
from .reader import tensor_views

DEFAULT_SLOTS_PER_ROUTED = 2  # slot buffers per routed expert (num_experts_per_tok)


def default_expert_slots(store: Store) -> int:
    """Enough slots for one token's experts twice over (a short verification pass in one batch)."""
    if not store.has_experts:
        return 0
    total = len(store.expert_extents(0))
    routed = store.config.get("num_experts_per_tok") or 1
    return max(1, min(total, DEFAULT_SLOTS_PER_ROUTED * int(routed)))


class ExpertReader:
    """The expert buffers (an LRU cache, offload/expert_cache.py) and the reads every streamed
    layer's experts go through. `buffers`: read buffers plus cache, one expert each. `layers`:
    the layers whose experts come through here; `prefetch`: None, or a guess of the next of those
    layers' experts (offload/expert_guess.py); `page_cache`: buffered reads (expert_reads.py)."""

    def __init__(self, store: Store, buffers: int, stats, lock: threading.Condition,
                 convert: Callable[[dict], dict], layers: Iterable[int] = (), prefetch=None,
                 page_cache: bool = False):
        self.store, self.stats, self.lock, self.convert = store, stats, lock, convert
        self.pool = ExpertPool(buffers, store.max_expert_nbytes)
        self.reads = ExpertReads(store, stats, lock, page_cache=page_cache)
        self.layers, self.prefetch = frozenset(layers), prefetch
        self._guessed: set[tuple[int, int]] = set()
        self._room: tuple[int, frozenset] | None = None  # (layer, its buffers in use): a guess may follow

    @property
    def buffer_nbytes(self) -> int:
        return self.pool.nbytes

    def layer(self, i: int) -> "LayerExperts":
        return LayerExperts(self, i)

    def batches(self, layer: int, ids: list[int], last: list[int] | None = None
                ) -> Iterator[Iterator[tuple[int, dict]]]:
        """Batches of (expert, {part: tensor}) for `ids` (ascending), at most len(pool) per
        batch. The first batch's reads are submitted before this returns. `last`: the experts
        the pass's last token routed to (what a guess for the next pass may use)."""
        self._settle()
        used_guesses = sum((layer, e) in self._guessed and self.pool.holds(layer, e) for e in ids)
        self._guessed.clear()
        with self.lock:
            self.stats.experts_used += len(ids)
            self.stats.expert_layers += 1
            self.stats.expert_prefetch_used += used_guesses
        if self.prefetch is not None and last is not None:
            self.prefetch.record(layer, last)
        size = len(self.pool)
        chunks = [ids[s:s + size] for s in range(0, len(ids), size)] or [[]]
        first = self._issue(layer, chunks[0], last_chunk=len(chunks) == 1)
        return self._arrivals(layer, chunks, first)

    def _arrivals(self, layer: int, chunks: list[list[int]], first: dict[int, int]):
        where = first
        for n, chunk in enumerate(chunks):
            if n:
                self._settle()  # the previous batch's buffers are free again
                where = self._issue(layer, chunk, last_chunk=n == len(chunks) - 1, first_chunk=False)
            yield self._ready(layer, chunk, where)

    def _issue(self, layer: int, chunk: list[int], last_chunk: bool, first_chunk: bool = True) -> dict[int, int]:
        where, misses = self.pool.assign(layer, chunk)
        for e in misses:
            self.reads.submit(layer, e, self.pool.buffers[where[e]])
        with self.lock:
            self.stats.expert_cache_hits += len(chunk) - len(misses)
        self._room = (layer, frozenset((layer, e) for e in chunk)) if last_chunk and first_chunk else None
        if last_chunk and self.prefetch is not None and layer + 1 in self.layers:
            self._read_guess(layer, self.prefetch.guess(layer + 1), frozenset((layer, e) for e in chunk))
        return where

    def _ready(self, layer: int, chunk: list[int], where: dict[int, int]) -> Iterator[tuple[int, dict]]:
        for e in chunk:
            try:
                self.reads.wait(layer, e)
            except BaseException:
                self.pool.forget(layer, [e])
                self._drop_failed()
                self._guessed.clear()
                raise
            yield e, self._views(layer, e, self.pool.buffers[where[e]])

    def saw_layer(self, layer: int, views: dict, streamed: bool) -> None:
        """A layer's tensors as the model gets them (a guess may keep some: NextRouter)."""
        if self.prefetch is not None:
            self.prefetch.saw_layer(layer, views, streamed)

    def next_router(self, layer: int):
        """(norm, router) of layer+1 for the model's next-router guess; None: no such guess."""
        if self.prefetch is None or layer + 1 not in self.layers:
            return None
        return self.prefetch.next_router(layer)

    def read_ahead(self, layer: int, ids: list[int]) -> None:
        """Read the experts `ids` (most likely first) of layer+1 into the buffers layer's own
        reads left free. Only right after layer's experts were asked for in one batch: a union
        that needs several batches leaves no buffer free."""
        if self._room is None or self._room[0] != layer:
            return
        self._read_guess(layer, ids, self._room[1])
        self._room = None

    def _read_guess(self, layer: int, guess: list[int], busy: frozenset) -> None:
        following = layer + 1
        if following not in self.layers:
            return
        room = len(self.pool) - len(busy)
        seen: set[int] = set()
        ids = [e for e in guess if not (e in seen or seen.add(e)) and not self.pool.holds(following, e)][:room]
        if not ids:
            return
        where, misses = self.pool.assign(following, ids, keep=busy)
        self._guessed = {(following, e) for e in misses}
        for e in misses:
            self.reads.submit(following, e, self.pool.buffers[where[e]])
        with self.lock:
            self.stats.expert_prefetched += len(misses)

    def _settle(self) -> None:
        """Every read in flight ended; a failed one leaves no expert behind and raises, unless
        it was a guess (an expert routed to is read again, and fails then)."""
        failed = [error for key, error in self._drop_failed() if key not in self._guessed]
        if failed:
            raise failed[0]

    def _drop_failed(self) -> list[tuple[tuple[int, int], BaseException]]:
        failed = self.reads.settle()
        for (layer, e), _ in failed:
            self.pool.forget(layer, [e])
        return failed

    def _views(self, layer: int, expert: int, buf) -> dict:
        return self.convert(tensor_views(buf, self.store.expert_extents(layer)[expert].tensors))

    def close(self) -> None:
        self.reads.close()


class LayerExperts:
    """What a streamed layer's dict holds under EXPERT_SOURCE: its experts, read on demand."""

    def __init__(self, source: ExpertReader, layer: int):
        self.source, self.layer = source, layer

    def batches(self, ids: list[int], last: list[int] | None = None) -> Iterator[Iterator[tuple[int, dict]]]:
        return self.source.batches(self.layer, ids, last)

    def next_router(self):
        """(post-attention norm, router) of the next layer, when the prefetch guess wants the
        model to apply them to this layer's residual (offload/expert_guess.NextRouter); else None."""
        return self.source.next_router(self.layer)

    def read_ahead(self, ids: list[int]) -> None:
        """The next layer's guessed experts, most likely first, to read while this layer computes."""
        self.source.read_ahead(self.layer, ids)


def with_experts(views: dict, source: ExpertReader | None, layer: int) -> dict:
    """A streamed layer's dense views, plus its experts' source when the store has experts."""
    if source is None:
        return views
    return {**views, EXPERT_SOURCE: source.layer(layer)}
