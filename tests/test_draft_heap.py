"""tools/draft/heap.py: the fixed mmap threshold really keeps mid-sized blocks off the heap.

Each check runs in a child process so the test process's allocator is left as it was."""
import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import ctypes, ctypes.util, sys
from tools.draft.heap import cap_mmap_threshold

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = Info
if sys.argv[1] == "cap":
    assert cap_mmap_threshold()
libc.free(libc.malloc(1 << 20))     # freeing a mapped 1 MiB block raises glibc's own threshold
before = libc.mallinfo2().hblks
block = libc.malloc(256 << 10)
print(libc.mallinfo2().hblks - before)   # 1: the block is its own mapping; 0: it came from the heap
"""


def _glibc_with_mallinfo2() -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    return hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")


def _mapped_after(mode: str) -> int:
    # glibc's own threshold settings from the environment would fix it for "default" too
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1], env=env)
    return int(out.stdout.strip())


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_capped_threshold_maps_blocks_the_dynamic_one_would_keep_on_the_heap():
    assert _mapped_after("default") == 0
    assert _mapped_after("cap") == 1

