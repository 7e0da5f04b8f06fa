"""Stream a store's decoder layers with a background reader and a ring of buffers.

`StreamedWeights` is a weights source for the model (same duck type as
`specdec.weights.ResidentWeights`): `resident` (HF name -> tensor) and `layers()`, one
pass over the decoder layers in order. While the model computes layer i, a background
thread reads the next streamed layers into the other ring slots; when a pass ends it
goes straight on with the first streamed layers of the next pass, so the next pass (after
the draft has run) does not start cold.

Lifetime of a streamed layer's tensors: they view a ring slot, which is handed back to the
reader when the consumer takes the next layer; don't keep them past that. Pinned layers
are read once at construction and kept in RAM for good.

Idle work: `layers(idle=f)` hands the consumer's waits to `f`. When the next layer is not
read yet, the consumer calls `f(eta)` (without holding the ring's lock) instead of sleeping,
again and again until the layer is there or `f` returns False (nothing useful left, or not
worth starting), then waits as usual. `eta` estimates the seconds until the read under way
ends (from the reader's recent bytes per second; None before there is one). One call should
be short (the layer may arrive during it and then waits for it to end): a speculation strategy grows its draft tree there, one draft forward per call,
on the same thread, so the draft and the target's matmuls never compete for the cores.

Failure: an exception in the reader thread (an I/O error, a checksum mismatch) ends the
thread, which is joined, and is re-raised in the consumer from the `layers()` iterator;
the next `layers()` call starts a fresh reader. A pass that ends early (the model raised,
or the generator was closed) also stops and joins the reader, for the same fresh start.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .errors import InternalError
from .expert_guess import make_guess
from .expert_stream import ExpertReader, default_expert_slots, with_experts
from .format import FileMeta, Store, check_first_read, check_layout, open_store
from .reader import DirectReader, aligned_buffer, read_tensors, tensor_views


@dataclass
class StreamStats:
    bytes_read: int = 0  # bytes read from disk by this source (streamed + pinned + resident)
    read_seconds: float = 0.0  # time the reader spent reading (incl. first-read checksums)
    compute_wait_seconds: float = 0.0  # time the consumer waited for a layer to arrive
    idle_seconds: float = 0.0  # of those waits, time spent in the idle callback (layers(idle=...))
    idle_delay_seconds: float = 0.0  # time layers sat ready until an idle call ended (its cost)
    passes: int = 0  # completed passes over the layers
    # Mixture-of-experts stores (offload/expert_stream.py); all 0 for a dense store.
    expert_bytes_read: int = 0  # of bytes_read, the routed experts' extents
    experts_read: int = 0  # expert extents read from disk
    experts_used: int = 0  # distinct experts a pass routed to, summed over its streamed layers
    expert_cache_hits: int = 0  # of those, found in the expert buffers (no read)
    expert_layers: int = 0  # layers of passes that asked for experts (divides experts_used)
    expert_read_seconds: float = 0.0  # time the pass waited for expert reads
    expert_prefetched: int = 0  # guessed experts read ahead for the next layer (expert_stream.py)
    expert_prefetch_used: int = 0  # of those, routed to by the layer they were read for

    @property
    def expert_hit_rate(self) -> float | None:
        """Of the experts passes routed to, the share found in the expert buffers (None: none routed)."""
        return self.expert_cache_hits / self.experts_used if self.experts_used else None

    def as_dict(self) -> dict:
        return {**asdict(self), "expert_hit_rate": self.expert_hit_rate}

    def expert_counters(self) -> dict[str, float]:
        """The cumulative expert counters (a generation's figures are differences of two)."""
        return {k: getattr(self, k) for k in EXPERT_COUNTERS}


EXPERT_COUNTERS = ("expert_layers", "experts_used", "experts_read", "expert_cache_hits",
                   "expert_bytes_read", "expert_read_seconds", "expert_prefetched", "expert_prefetch_used")


class StreamedWeights:
    """Weights source streaming decoder layers from a store.

    pinned: None (stream every layer), an int N (pin the first N layers), or an iterable of
    layer indices. Pinned layers are read once and never re-read.
    ring_size: number of layer buffers the reader fills ahead (>= 1; 2 overlaps read and compute).
    expert_slots: a mixture-of-experts store's buffers for routed experts (offload/expert_stream.py;
    default: twice the experts one token routes to; more buffers are an expert cache).
    pin_experts: a pinned layer of such a store keeps all its experts in RAM (True), or only
    its dense part, its experts read as routed like a streamed layer's (False).
    expert_prefetch: read the next layer's guessed experts while a layer computes: False (none),
    "previous-pass", "next-router" or True (the default guess; offload/expert_guess.py). Only
    bytes depend on it.
    expert_page_cache: read experts through the page cache (buffered) instead of O_DIRECT.
    dtype: convert every plain float tensor to this dtype (a copy per layer) if it differs from
    the store's. Encoded weights (q4, q8) are never converted: they are zero-copy views of the
    ring slot (streamed) or of their own buffer (pinned), and compute in whatever dtype their
    input has (float32 input: their exact path).
    """

    def __init__(self, store: Store | str | Path, pinned: int | Iterable[int] | None = None,
                 ring_size: int = 2, dtype: torch.dtype | None = None,
                 chunk_bytes: int | None = None, read_threads: int | None = None,
                 expert_slots: int | None = None, pin_experts: bool = True,
                 expert_prefetch: bool | str = False, expert_page_cache: bool = False):
        self.store = store if isinstance(store, Store) else open_store(store)
        check_layout(self.store)  # int4 bytes packed for another CPU would compute garbage
        self.num_layers = self.store.num_layers
        self.dtype = dtype
        self.pinned_layers = _normalize_pinned(pinned, self.num_layers)
        self.streamed_layers = [i for i in range(self.num_layers) if i not in self.pinned_layers]
        self.stats = StreamStats()
        self.pin_experts = pin_experts
        opts = {k: v for k, v in (("chunk_bytes", chunk_bytes), ("threads", read_threads)) if v}
        self._reader = DirectReader(**opts)
        try:
            self.resident = self._convert(self._read_owned(None))
            self._pinned = {i: self._convert(self._read_owned(i)) for i in self.pinned_layers}
        finally:
            self._reader.close()  # join the pool threads; the prefetch thread makes its own
        self._ring = _Ring(self.store, self.streamed_layers, max(1, ring_size), self._reader, self.stats)
        self._experts = None
        if self.store.has_experts and (self.streamed_layers or not pin_experts):
            slots = expert_slots or default_expert_slots(self.store)
            routed = range(self.num_layers) if not pin_experts else self.streamed_layers
            self._experts = ExpertReader(self.store, slots, self.stats, self._ring.cond, self._convert,
                                         layers=routed, prefetch=make_guess(expert_prefetch),
                                         page_cache=expert_page_cache)
        self._active: int | None = None  # token of the pass in progress
        self._next_token = 0
        self._closed = False
        # Stop the thread if the source is dropped without close(); the thread holds only
        # the ring, not self, so this can run.
        self._finalizer = weakref.finalize(self, self._ring.stop)

    @property
    def pinned_tensors(self) -> dict[int, dict[str, torch.Tensor]]:
        """Pinned layer index -> its tensors (in RAM for good; others may share them)."""
        return dict(self._pinned)

    @property
    def ring_size(self) -> int:
        return self._ring.size

    @property
    def streamed_bytes_per_pass(self) -> int:
        return sum(self.store.layer_nbytes(i) for i in self.streamed_layers)

    @property
    def streams_experts(self) -> bool:
        """Some layer's experts are read as routed (not all held in RAM)."""
        return self._experts is not None

    @property
    def expert_buffer_nbytes(self) -> int:
        """RAM of the routed experts' slot buffers (0 without experts or streamed layers)."""
        return self._experts.buffer_nbytes if self._experts is not None else 0

    def _read_owned(self, layer: int | None) -> dict[str, torch.Tensor]:
        """Read the resident file (layer None) or a whole layer, its experts included, into
        buffers of their own, checksummed."""
        s = self.store
        if layer is None:
            return self._read_file(s.resident_meta)
        views = self._read_file(s.layer_meta(layer))
        if s.has_experts and self.pin_experts:
            views.update(self._read_file(s.expert_meta(layer)))
        return views

    def _read_file(self, meta: FileMeta) -> dict[str, torch.Tensor]:
        s = self.store
        t0 = time.perf_counter()
        views = read_tensors(s.path / meta.name, meta.tensors, meta.size, self._reader,
                             check=lambda buf: check_first_read(s, meta.name, buf))
        self.stats.bytes_read += meta.size
        self.stats.read_seconds += time.perf_counter() - t0
        return views

    def _convert(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.dtype is None:
            return tensors
        return {k: v.to(self.dtype) if _plain_float(v) and v.dtype != self.dtype else v
                for k, v in tensors.items()}

    def reset_stats(self) -> None:
        with self._ring.cond:
            self.stats.bytes_read = self.stats.passes = 0
            self.stats.read_seconds = self.stats.compute_wait_seconds = 0.0
            self.stats.idle_seconds = self.stats.idle_delay_seconds = 0.0
            for name in EXPERT_COUNTERS:
                setattr(self.stats, name, type(getattr(self.stats, name))())

    # -- the pass -------------------------------------------------------------------------
    def layers(self, idle: Callable[[float | None], bool] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over layers 0..L-1. A previous pass left unfinished (its generator kept
        alive by a traceback) is abandoned: its reader is stopped and a fresh one started.
        `idle`: work to do while a layer is not read yet (see the module's idle work)."""
        if self._closed:
            raise RuntimeError("StreamedWeights is closed; create a new one.")
        if self._active is not None:
            self._active = None
            self._ring.stop()
        self._next_token += 1
        token = self._active = self._next_token
        self._ring.start()
        return self._iterate(token, idle)

    def _iterate(self, token: int, idle) -> Iterator[dict[str, torch.Tensor]]:
        completed = False
        try:
            for i in range(self.num_layers):
                if i in self._pinned:
                    self._show_experts(i, self._pinned[i], streamed=False)
                    yield with_experts(self._pinned[i], None if self.pin_experts else self._experts, i)
                    continue
                yield from self._streamed(i, token, idle)
            completed = True
            self.stats.passes += 1
        finally:
            if self._active == token:
                self._active = None
                if not completed:
                    self._ring.stop()  # the reader is mid-pass: restart it cleanly next time

    def _streamed(self, i: int, token: int, idle) -> Iterator[dict[str, torch.Tensor]]:
        t0 = time.perf_counter()
        layer, slot, epoch, delay = self._ring.take(lambda: self._active == token, idle)
        # The wait is until the layer was there; idle work past that is its delay.
        self.stats.compute_wait_seconds += time.perf_counter() - t0 - delay
        self.stats.idle_delay_seconds += delay
        if layer != i:  # the ring is strictly ordered; anything else is a bug, not bad input
            raise InternalError(f"prefetch out of order: expected layer {i}, got {layer}")
        views = with_experts(tensor_views(self._ring.buffers[slot], self.store.layer_tensors(i)),
                             self._experts, i)
        encoded = any(not isinstance(v, torch.Tensor) for v in views.values())
        if encoded and self.dtype is not None:
            views = self._convert(views)  # the plain tensors only; the slot stays held
        elif self.dtype is not None and any(v.dtype != self.dtype for v in views.values()
                                            if v.is_floating_point()):
            # Converting copies anyway: copy everything and refill the slot right away.
            views = {k: v.to(self.dtype, copy=True) if v.is_floating_point() else v.clone()
                     for k, v in views.items()}
            self._ring.release(slot, epoch)
            self._show_experts(i, views, streamed=False)  # already copies of their own
            yield views
            return
        self._show_experts(i, views, streamed=True)
        try:
            yield views
        finally:
            self._ring.release(slot, epoch)

    def _show_experts(self, i: int, views: dict, streamed: bool) -> None:
        if self._experts is not None:
            self._experts.saw_layer(i, views, streamed)

    def wait_prefetched(self, timeout: float = 30.0) -> bool:
        """Block until the reader has filled every ring slot and is idle (or has stopped, or
        `timeout` passed); True if the ring is full. Benchmarks use it to start from the
        state a pass finds after the draft has run."""
        return self._ring.wait_full(timeout)

    def close(self) -> None:
        """Stop and join the reader thread. Idempotent."""
        self._closed = True
        self._active = None
        self._finalizer()
        if self._experts is not None:
            self._experts.close()

    def __enter__(self) -> "StreamedWeights":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"StreamedWeights({self.store.path}, pinned={sorted(self.pinned_layers)}, "
                f"ring_size={self.ring_size}, streamed={len(self.streamed_layers)} layers)")


def _plain_float(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _normalize_pinned(pinned, num_layers: int) -> frozenset[int]:
    if pinned is None:
        return frozenset()
    if isinstance(pinned, int):
        if not 0 <= pinned <= num_layers:
            raise ValueError(f"pinned={pinned}: must be between 0 and the {num_layers} layers")
        return frozenset(range(pinned))
    ids = frozenset(int(i) for i in pinned)
    bad = sorted(i for i in ids if not 0 <= i < num_layers)
    if bad:
        raise ValueError(f"pinned layers {bad} out of range 0..{num_layers - 1}")
    return ids


class _Ring:
    """The reader thread and its ring of slots. Slots cycle free -> filled -> held -> free;
    the thread reads `order` cyclically (pass after pass) into free slots."""

    def __init__(self, store: Store, order: list[int], size: int, reader: DirectReader,
                 stats: StreamStats):
        self.store, self.order, self.size, self.reader, self.stats = store, order, size, reader, stats
        largest = max((store.layer_nbytes(i) for i in order), default=0)
        self.buffers = [aligned_buffer(largest) for _ in range(size)] if order else []
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.current: tuple[int, float] | None = None  # (bytes, start time) of the read under way
        self.seconds_per_byte: float | None = None  # recent reads' speed (moving average)
        self.epoch = 0
        self._reset()

    def _reset(self) -> None:
        # A new epoch: slots handed out before the reset must not come back into the ring.
        self.epoch += 1
        self.free = deque(range(len(self.buffers)))
        self.filled: deque[tuple[int, int]] = deque()
        self.filled_at: dict[int, float] = {}  # slot -> when its read ended
        self.error: BaseException | None = None
        self.stopping = False

    def start(self) -> None:
        if not self.order or (self.thread is not None and self.thread.is_alive()
                              and not self.stopping):
            return
        # Collect a thread that died of an error, or one whose stop() was cut short (Ctrl-C
        # landing in its join): it is exiting and would never fill the ring again.
        self.stop()
        self.thread = threading.Thread(target=self._run, name="specdec-prefetch", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop and join the thread, then forget every slot's contents."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        with self.cond:
            self._reset()

    def take(self, still_wanted, idle: Callable[[float | None], bool] | None = None
             ) -> tuple[int, int, int, float]:
        """Wait for the next filled slot: (layer index, slot, epoch, delay). While it is not
        there, call `idle(eta)` instead of sleeping until it returns False; `delay` is how long
        the layer sat ready until the idle call running when it arrived ended. Re-raises the
        thread's error."""
        delay = 0.0
        while True:
            with self.cond:
                ready, error = self._poll(still_wanted)
                if ready is not None:
                    return (*ready, self.epoch, delay)
                if error is None and idle is None:
                    self.cond.wait(timeout=0.5)
                    continue
            if error is not None:
                self.stop()  # join the dead thread now so nothing outlives the error
                raise error
            started = time.perf_counter()
            more = idle(self.eta())  # outside the lock: the reader keeps filling slots meanwhile
            ended = time.perf_counter()
            self.stats.idle_seconds += ended - started
            with self.cond:
                if self.filled:
                    arrived = self.filled_at.get(self.filled[0][1], started)
                    delay = ended - max(arrived, started)
            if not more:
                idle = None

    def eta(self) -> float | None:
        """Seconds until the read under way ends, estimated from the reader's recent speed;
        None when nothing is being read or no read has been timed yet."""
        current, per_byte = self.current, self.seconds_per_byte
        if current is None or per_byte is None:
            return None
        nbytes, started = current
        return max(0.0, started + nbytes * per_byte - time.perf_counter())

    def _poll(self, still_wanted) -> tuple[tuple[int, int] | None, BaseException | None]:
        """(the next filled (layer, slot), None), (None, the error to raise) or (None, None)
        while the reader is still at it. Called holding the lock."""
        if not still_wanted():
            raise RuntimeError("this pass over the layers was abandoned (layers() was "
                               "called again); iterate the new pass instead.")
        if self.filled:
            return self.filled.popleft(), None
        if self.error is not None:
            return None, self.error
        if self.thread is None or not self.thread.is_alive():
            # It leaves only when stopped (not the case here) or with self.error set.
            return None, InternalError("the prefetch thread stopped without an error")
        return None, None

    def wait_full(self, timeout: float) -> bool:
        def done():
            return (not self.free or self.error is not None or self.thread is None
                    or not self.thread.is_alive())
        with self.cond:
            self.cond.wait_for(done, timeout)
            return not self.free and bool(self.buffers)

    def release(self, slot: int, epoch: int) -> None:
        with self.cond:
            if epoch == self.epoch and not self.stopping:
                self.free.append(slot)
                self.cond.notify_all()

    def _run(self) -> None:
        pos = 0
        try:
            while True:
                with self.cond:
                    while not self.stopping and not self.free:
                        self.cond.wait()
                    if self.stopping:
                        return
                    slot = self.free.popleft()
                layer = self.order[pos % len(self.order)]
                self._read(layer, slot)
                with self.cond:
                    if self.stopping:
                        return
                    self.filled.append((layer, slot))
                    self.filled_at[slot] = time.perf_counter()
                    self.cond.notify_all()
                pos += 1
        except BaseException as e:  # handed to the consumer, which re-raises it
            with self.cond:
                self.error = e
                self.cond.notify_all()
        finally:
            self.reader.close()

    def _read(self, layer: int, slot: int) -> None:
        meta = self.store.layer_meta(layer)
        t0 = time.perf_counter()
        self.current = (meta.size, t0)
        try:
            self.reader.read_file(self.store.path / meta.name, self.buffers[slot], meta.size)
            check_first_read(self.store, meta.name, self.buffers[slot])
        finally:
            self.current = None
        seconds = time.perf_counter() - t0
        per_byte = seconds / max(meta.size, 1)
        old = self.seconds_per_byte
        self.seconds_per_byte = per_byte if old is None else 0.8 * old + 0.2 * per_byte
        with self.cond:
            self.stats.bytes_read += meta.size
            self.stats.read_seconds += seconds
