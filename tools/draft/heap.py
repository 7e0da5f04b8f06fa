"""Keep a long training process's heap from growing without bound (glibc only).

glibc serves a request of at least its mmap threshold with its own mapping, returned to the
system on free, and everything smaller from the heap, which it rarely shrinks. The threshold
starts at 128 KiB but rises each time a mapped block is freed, up to 32 MiB, so after a few
steps the batches' activations (a few MB each, a different shape every step) come from the
heap, and what a step's peak took from it stays resident: a 12-layer distil_corpus run was at
23 GB when the OOM killer stopped it (step ~95). Setting the threshold explicitly (what
MALLOC_MMAP_THRESHOLD_ does from the environment) also turns that rise off: a 10-minute
side-by-side run held 1.7-2.9 GB between steps against ~6 GB, with the same losses, and a
130-step 12-layer run 1.9-5.6 GB between steps with no upward trend. Its short peaks (up to 16
GB) were batches padded to up to 8x their tokens, fixed in distil.length_batches."""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3      # glibc's malloc.h
MMAP_THRESHOLD = 64 * 1024


def cap_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no glibc (macOS,
    musl: their allocators do not keep the heap this way) or glibc refused the setting."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return libc.mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
