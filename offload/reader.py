"""Uncached sequential reads into page-aligned buffers, exposed as zero-copy tensors.

Why O_DIRECT: streamed weights are read once per pass and never reused from the page
cache, so caching them only evicts things that matter (the draft, the KV cache) and,
in benchmarks, hides the disk. O_DIRECT needs the buffer address, the file offset and
the length aligned to the device block size: buffers are anonymous `mmap`s (page
aligned), store files are padded to 4096, and reads are whole 4096-multiples.

Why several reads in flight: one synchronous read at a time leaves the SSD idle between
requests. Chunks of `chunk_bytes` are read by a small thread pool; `os.preadv` releases
the GIL, so the reads overlap each other and the model's matmuls in the main thread.

Fallback, when O_DIRECT is refused (tmpfs and some FUSE filesystems fail with EINVAL at
open or at the first read): plain preadv, then `posix_fadvise(POSIX_FADV_DONTNEED)` on the
range just read so the page cache does not fill with weights; on macOS `F_NOCACHE`.
`DirectReader.direct_files` / `fallback_files` count which path was taken.
"""
from __future__ import annotations

import errno
import mmap
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import torch

from . import encodings
from .format import ALIGN, TensorMeta, align_up

DEFAULT_CHUNK = 8 << 20
DEFAULT_THREADS = 4


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """A zeroed, page-aligned, writable buffer of at least `nbytes` (rounded up to ALIGN)."""
    return mmap.mmap(-1, max(align_up(nbytes), ALIGN), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def tensor_views(buf, tensors: dict[str, TensorMeta], repack: bool = False) -> dict:
    """name -> tensor (or encoded weight, offload/encodings) viewing `buf` in place (no copy).
    Valid while `buf`'s contents are. An encoded weight packed for another int4 layout raises
    LayoutMismatchError, or with `repack` is converted (a copy; offload/repack.py)."""
    whole = torch.frombuffer(buf, dtype=torch.uint8)
    out = {}
    for name, t in tensors.items():
        if t.encoding is not None:
            parts = encodings.views(t.encoding, whole, t.offset)
            out[name] = encodings.decode(t.encoding, parts, repack=repack)
            continue
        if t.nbytes == 0:
            out[name] = torch.empty(t.shape, dtype=t.torch_dtype)
            continue
        # uint8 -> dtype is a reinterpretation (bf16 included), not a conversion.
        out[name] = whole[t.offset:t.offset + t.nbytes].view(t.torch_dtype).reshape(t.shape)
    return out


class DirectReader:
    """Reads whole files (or aligned ranges) into caller-owned aligned buffers.

    Thread-safe for concurrent calls; owns a thread pool until `close()`.
    Counters: bytes_read, read_seconds, direct_files, fallback_files.
    """

    def __init__(self, chunk_bytes: int = DEFAULT_CHUNK, threads: int = DEFAULT_THREADS,
                 direct: bool = True):
        if chunk_bytes % ALIGN or chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be a positive multiple of {ALIGN}")
        self.chunk_bytes = chunk_bytes
        self.threads = max(1, threads)
        self.direct = direct and hasattr(os, "O_DIRECT")
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.read_seconds = 0.0
        self.direct_files = 0
        self.fallback_files = 0

    def read_file(self, path: str | Path, buf, nbytes: int | None = None, offset: int = 0) -> int:
        """Read `nbytes` (default: to the end of the file) from `offset` into buf[0:].
        `offset` must be a multiple of ALIGN; buf must hold align_up(nbytes). Returns bytes read;
        raises OSError naming the file on failure or a short read."""
        path = Path(path)
        if offset % ALIGN:
            raise ValueError(f"offset {offset} is not a multiple of {ALIGN}")
        t0 = time.perf_counter()
        try:
            nbytes, direct = self._read(path, buf, nbytes, offset)
        except OSError as e:
            if e.filename is not None:
                raise
            # preadv errors carry no file name; the user needs it to act
            raise OSError(e.errno, f"{e.strerror} while reading (check the disk, then run "
                          "`specdec verify STORE`)", str(path)) from e
        with self._lock:
            self.bytes_read += nbytes
            self.read_seconds += time.perf_counter() - t0
            if direct:
                self.direct_files += 1
            else:
                self.fallback_files += 1
        return nbytes

    def read_ranges(self, path: str | Path, ranges: list[tuple[object, int, int]]) -> int:
        """Read several aligned ranges of one file, all issued together on the reader's threads:
        `ranges` lists (buffer, file offset, nbytes), each buffer holding align_up(nbytes). Returns
        the bytes read (counted in the reader's bytes_read); OSError naming the file on failure."""
        path = Path(path)
        t0 = time.perf_counter()
        fd, direct = self._open(path)
        try:
            try:
                _read_all(self, fd, ranges, direct, path)
            except OSError as e:
                if not (direct and e.errno == errno.EINVAL):
                    raise
                os.close(fd)  # O_DIRECT accepted at open but not for reads (some FUSE)
                fd = -1
                fd, direct = self._open(path, allow_direct=False)
                _read_all(self, fd, ranges, direct, path)
        finally:
            if fd >= 0:
                os.close(fd)
        total = sum(n for _, _, n in ranges)
        with self._lock:
            self.bytes_read += total
            self.read_seconds += time.perf_counter() - t0
            self.direct_files += direct
            self.fallback_files += not direct
        return total

    def _read(self, path: Path, buf, nbytes: int | None, offset: int) -> tuple[int, bool]:
        fd, direct = self._open(path)
        try:
            if nbytes is None:
                nbytes = os.fstat(fd).st_size - offset
            if len(buf) < align_up(nbytes):
                raise ValueError(f"buffer of {len(buf)} bytes is too small for {nbytes} from {path}")
            try:
                got = self._read_chunks(fd, buf, nbytes, offset, direct)
            except OSError as e:
                if not (direct and e.errno == errno.EINVAL):
                    raise
                # The filesystem accepted O_DIRECT at open but not for reads (some FUSE).
                os.close(fd)
                fd = -1
                fd, direct = self._open(path, allow_direct=False)
                got = self._read_chunks(fd, buf, nbytes, offset, direct)
            if got < nbytes:
                raise OSError(errno.EIO, f"short read ({got} of {nbytes} bytes): the file is "
                              "truncated. Re-pack the store with `specdec pack SRC OUT`", str(path))
            if not direct:
                _drop_cache(fd, offset, nbytes)
        finally:
            if fd >= 0:
                os.close(fd)
        return nbytes, direct

    def _open(self, path: Path, allow_direct: bool = True) -> tuple[int, bool]:
        if self.direct and allow_direct:
            try:
                return os.open(path, os.O_RDONLY | os.O_DIRECT), True
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT (tmpfs)
                    raise
        fd = os.open(path, os.O_RDONLY)
        if sys.platform == "darwin":
            import fcntl
            fcntl.fcntl(fd, fcntl.F_NOCACHE, 1)
        return fd, False

    def _read_chunks(self, fd: int, buf, nbytes: int, offset: int, direct: bool) -> int:
        # Each chunk reads a whole multiple of ALIGN (O_DIRECT needs it); at the end of the
        # file the kernel returns a short count, which is fine: the file ends there.
        chunks = [(start, min(self.chunk_bytes, align_up(nbytes) - start))
                  for start in range(0, align_up(nbytes), self.chunk_bytes)]
        view = memoryview(buf)
        try:
            if len(chunks) == 1 or self.threads == 1:
                got = sum(_pread_full(fd, view, s, n, offset) for s, n in chunks)
            else:
                pool = self._pool_get()
                futures = [pool.submit(_pread_full, fd, view, s, n, offset) for s, n in chunks]
                # Wait for every chunk, failed or not, before the caller closes fd: a read
                # still in flight on a closed (and reused) fd could read another file.
                wait(futures)
                got = sum(f.result() for f in futures)
        finally:
            view.release()
        return min(got, nbytes)

    def _pool_get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="specdec-read")
            return self._pool

    def close(self) -> None:
        """Shut down and join the read threads (a later read starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _pread_full(fd: int, view: memoryview, start: int, n: int, offset: int) -> int:
    """Read up to n bytes at file offset+start into view[start:]; stop early only at EOF."""
    done = 0
    while done < n:
        got = os.preadv(fd, [view[start + done:start + n]], offset + start + done)
        if got == 0:
            break
        done += got
        if done % ALIGN and done < n:
            break  # a short, unaligned count means EOF under O_DIRECT
    return done


def _drop_cache(fd: int, offset: int, nbytes: int) -> None:
    # Best effort by design: the data is already read correctly; failing to evict it only
    # costs page cache, so there is nothing to report.
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def read_tensors(path: str | Path, tensors: dict[str, TensorMeta], size: int,
                 reader: DirectReader | None = None, check=None, repack: bool = False) -> dict:
    """Read a whole store file into a fresh page-aligned buffer and view its tensors (no
    copy; the buffer lives as long as the views). `check(buf)`, if given, sees the bytes
    before any view is made (the store's first-read checksum)."""
    buf = aligned_buffer(size)
    own = reader is None
    reader = reader or DirectReader()
    try:
        reader.read_file(path, buf, size)
    finally:
        if own:
            reader.close()
    if check is not None:
        check(buf)
    return tensor_views(buf, tensors, repack)


def _read_all(reader: DirectReader, fd: int, ranges, direct: bool, path: Path) -> None:
    views = [memoryview(buf) for buf, _, _ in ranges]
    try:
        jobs = [(view, start, min(reader.chunk_bytes, align_up(n) - start), offset)
                for view, (_, offset, n) in zip(views, ranges)
                for start in range(0, align_up(n), reader.chunk_bytes)]
        pool = reader._pool_get()
        futures = [pool.submit(_pread_full, fd, *job) for job in jobs]
        wait(futures)  # every read ends before fd is closed, failed or not
        got = [f.result() for f in futures]
    finally:
        for view in views:
            view.release()
    for (view, start, n, offset), count in zip(jobs, got):
        if count < n:
            raise OSError(errno.EIO, f"short read at offset {offset + start} ({count} of {n} bytes): "
                          "the file is truncated. Re-pack the store with `specdec pack SRC OUT`", str(path))
    if not direct:
        for _, offset, n in ranges:
            _drop_cache(fd, offset, n)
