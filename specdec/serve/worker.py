"""One decoder, one generation at a time: a bounded FIFO of jobs run by one thread.

The decoder is single-threaded by design (a second call raises DecoderBusy), and its passes
hold the CPU for seconds, so they run here, off the HTTP event loop. A job is an iterator
(one item per verification pass); the thread hands each item to the job's asyncio queue.
Cancelling a job (its client went away, or the server is stopping) takes effect between two
items, i.e. at the next pass: the iterator is closed, which ends the decoder's run and
leaves its caches consistent, and the decoder moves on to the next job.

Cancellation and stopping are plain attribute writes, safe from a signal handler (no lock
is taken there).
"""
from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from typing import Callable, Iterator

ITEM, ERROR, END = "item", "error", "end"


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__("queue full")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    pass


class Job:
    def __init__(self, run: Callable[[], Iterator], loop: asyncio.AbstractEventLoop):
        self._run = run
        self._loop = loop
        self.events: asyncio.Queue = asyncio.Queue()  # (ITEM|ERROR|END, value), read on the loop
        self.cancelled = False
        self.client_left = False  # why it was cancelled, for the log: the client went away
        self.queued_at = time.perf_counter()
        self.started_at: float | None = None

    def cancel(self, client_left: bool = False) -> None:
        if client_left:
            self.client_left = True
        self.cancelled = True

    @property
    def queued_seconds(self) -> float:
        return (self.started_at or time.perf_counter()) - self.queued_at

    async def items(self):
        """The job's items as they come; raises what the job raised."""
        while True:
            kind, value = await self.events.get()
            if kind == END:
                return
            if kind == ERROR:
                raise value
            yield value

    def _post(self, kind: str, value=None) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:
            pass  # the event loop is closed: the server stopped, nobody is listening


class GenerationQueue:
    def __init__(self, queue_length: int):
        if queue_length < 0:
            raise ValueError(f"the queue length must be >= 0, got {queue_length}")
        self.queue_length = queue_length
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._in_system = 0  # queued + running
        self._running: Job | None = None
        self._stopping = False
        self._mean_seconds = 1.0  # of recent jobs, for Retry-After
        self._thread = threading.Thread(target=self._serve_jobs, name="specdec-decoder", daemon=True)
        self._thread.start()

    # -- the event loop's side ------------------------------------------------------------
    def submit(self, run: Callable[[], Iterator]) -> Job:
        """Queue `run`; raises QueueFull when `queue_length` jobs already wait behind a
        running one, ShuttingDown once stop() was called."""
        job = Job(run, asyncio.get_running_loop())
        with self._lock:
            if self._stopping:
                raise ShuttingDown()
            if self._in_system > self.queue_length:
                raise QueueFull(max(1, math.ceil(self._mean_seconds * self._in_system)))
            self._in_system += 1
            self._jobs.put(job)
        return job

    def status(self) -> dict:
        with self._lock:
            running = self._running is not None
            return {"generating": running, "queued": self._in_system - running,
                    "queue_length": self.queue_length}

    def stop_soon(self) -> None:
        """Refuse new jobs, cancel the running one at its next pass, fail the queued ones.
        Attribute writes only: called from a signal handler."""
        self._stopping = True
        running = self._running
        if running is not None:
            running.cancel()

    def close(self, timeout: float | None = None) -> None:
        """Stop and wait for the decoder thread (it finishes its current pass first)."""
        self.stop_soon()
        self._jobs.put(None)
        self._thread.join(timeout)

    # -- the decoder thread ---------------------------------------------------------------
    def _serve_jobs(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._running = job
            job.started_at = time.perf_counter()
            try:
                self._run_one(job)
            finally:
                with self._lock:
                    self._running = None
                    self._in_system -= 1
                seconds = time.perf_counter() - job.started_at
                self._mean_seconds = 0.7 * self._mean_seconds + 0.3 * seconds
                job._post(END)

    def _run_one(self, job: Job) -> None:
        if self._stopping:
            job._post(ERROR, ShuttingDown())
            return
        if job.cancelled:
            return  # its client left while it waited
        items = job._run()
        try:
            for item in items:
                job._post(ITEM, item)
                if job.cancelled or self._stopping:
                    break
        except BaseException as e:  # handed to the request, which answers with it
            job._post(ERROR, e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # ends the decoder's run now: caches rolled back, decoder free
