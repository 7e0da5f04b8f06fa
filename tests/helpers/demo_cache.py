"""A specdec cache directory that already holds the demo target's store, as the first
`specdec chat` leaves it, for tests of what comes after the first use (serving, the README's
script); the first-use pack itself is tested by tests/test_cli.py's demo pipe."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def demo_cache(cache_dir: Path, store: Path, gguf: Path) -> Path:
    """`cache_dir` with `store` (the conftest's smollm2_store, packed from `gguf`) where the
    demo's load looks for it, as hard links (a copy across file systems)."""
    from specdec.session import packed_store_path

    dest = packed_store_path(gguf, "bfloat16", cache_dir)  # the demo packs with bf16 norms
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(store, dest, copy_function=_link_or_copy)
    return cache_dir


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
