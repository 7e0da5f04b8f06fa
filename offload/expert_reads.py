"""Reads of single experts into their buffers, all in flight together, each waited for on its own.

A pass's missing experts of a layer are submitted at once, one read per expert (O_DIRECT through
DirectReader, checksummed on the first read of each expert), on a few threads that release the
GIL while they read and hash. The consumer then computes the experts in ascending id and waits
for each one only when it gets to it, so the reads of the later experts overlap the compute of
the earlier ones (and whatever the model computes before it asks: a shared expert). Guessed
experts of the next layer go through the same queue (offload/expert_stream.py).

`page_cache=True` reads through the page cache instead (buffered pread, pages left cached): the
kernel, not the expert buffers, then keeps the hot experts, within whatever memory cap the
process runs under. It exists to compare the two (docs/moe.md); O_DIRECT is the default.

Counters (StreamStats, under the stream's lock): bytes_read, expert_bytes_read, experts_read
and read_seconds when a read ends (worker time, summed over threads); expert_read_seconds is the
time the consumer waited for expert reads: what they cost the pass.
"""
from __future__ import annotations

import errno
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait

from .format import Store, check_expert_first_read
from .reader import DirectReader, _pread_full

DEFAULT_EXPERT_THREADS = 4  # experts read at once (each one read of one extent)


class ExpertReads:
    def __init__(self, store: Store, stats, lock: threading.Condition,
                 threads: int = DEFAULT_EXPERT_THREADS, page_cache: bool = False):
        self.store, self.stats, self.lock, self.page_cache = store, stats, lock, page_cache
        self.reader = DirectReader()
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="specdec-experts")
        self.inflight: dict[tuple[int, int], Future] = {}

    def submit(self, layer: int, expert: int, buf) -> None:
        self.inflight[(layer, expert)] = self._threads.submit(self._read, layer, expert, buf)

    def _read(self, layer: int, expert: int, buf) -> None:
        extent = self.store.expert_extents(layer)[expert]
        t0 = time.perf_counter()
        if self.page_cache:
            nbytes = _buffered_read(self.store.expert_file(layer), buf, extent.offset, extent.nbytes)
        else:
            nbytes = self.reader.read_ranges(self.store.expert_file(layer), [(buf, extent.offset, extent.nbytes)])
        check_expert_first_read(self.store, layer, expert, buf)
        with self.lock:
            self.stats.bytes_read += nbytes
            self.stats.expert_bytes_read += nbytes
            self.stats.experts_read += 1
            self.stats.read_seconds += time.perf_counter() - t0

    def wait(self, layer: int, expert: int) -> None:
        """Until expert's read (if one is in flight) ended; its error, if it failed."""
        future = self.inflight.get((layer, expert))
        if future is None:
            return
        t0 = time.perf_counter()
        try:
            future.result()
        finally:
            del self.inflight[(layer, expert)]
            self._waited(t0)

    def settle(self) -> list[tuple[tuple[int, int], BaseException]]:
        """Wait for every read in flight; ((layer, expert), error) of those that failed (their
        buffers hold no valid bytes)."""
        if not self.inflight:
            return []
        t0 = time.perf_counter()
        wait(self.inflight.values())
        self._waited(t0)
        failed = [(key, f.exception()) for key, f in self.inflight.items() if f.exception() is not None]
        self.inflight.clear()
        return failed

    def _waited(self, t0: float) -> None:
        with self.lock:
            self.stats.expert_read_seconds += time.perf_counter() - t0

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self.inflight.clear()
        self.reader.close()


def _buffered_read(path, buf, offset: int, nbytes: int) -> int:
    """One extent through the page cache (its pages stay cached); OSError on a short read."""
    fd = os.open(path, os.O_RDONLY)
    view = memoryview(buf)
    try:
        got = _pread_full(fd, view, 0, nbytes, offset)
    finally:
        view.release()
        os.close(fd)
    if got < nbytes:
        raise OSError(errno.EIO, f"short read at offset {offset + got} ({got} of {nbytes} bytes): the "
                      "file is truncated. Re-pack the store with `specdec pack SRC OUT`", str(path))
    return nbytes
