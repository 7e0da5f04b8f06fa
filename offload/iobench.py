"""Measurement helpers for I/O benchmarks (no model code here: that lives in specdec).

The page cache hides the disk, so the raw read goes through the same O_DIRECT reader as
streaming; bytes really read from the device come from /proc/self/io (Linux).
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from .memcap import proc_io
from .reader import DirectReader, aligned_buffer


def proc_read_bytes() -> int | None:
    """Bytes this process has caused to be read from storage (Linux), else None: the
    caller reports None, not a made-up number."""
    return proc_io().get("read_bytes")


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def time_raw_read(files: list[Path], reader: DirectReader | None = None) -> tuple[float, int, bool]:
    """Read `files` back to back, uncached, into one reused buffer, as one pass streams them.
    Returns (seconds, bytes, all_direct)."""
    if not files:
        return 0.0, 0, True
    own = reader is None
    reader = reader or DirectReader()
    buf = aligned_buffer(max(f.stat().st_size for f in files))
    fallback0 = reader.fallback_files
    try:
        t0 = time.perf_counter()
        total = sum(reader.read_file(f, buf) for f in files)
        seconds = time.perf_counter() - t0
    finally:
        if own:
            reader.close()
    return seconds, total, reader.fallback_files == fallback0
