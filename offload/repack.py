"""Repack a store's int4 bytes for this machine's CPU layout (`specdec repack STORE`).

q4/q8 weights are stored as torch's int4 kernel bytes, whose order depends on the CPU's
instruction set (encodings/int4_layout.py). A store moved to a machine with another layout is
refused on open (format.check_layout); this rewrites it once: every file read and checksummed,
each encoded weight converted through its portable codes (`decode(..., repack=True)`, about
0.2 GB/s), plain tensors copied as they are, written like a pack (temp directory, fsync,
manifest last, rename over the old store), with a progress bar, on one torch thread as a pack
(pack.one_thread: the same reads, per-weight conversions and writes).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

from .encodings import int4_layout
from .format import StoreError, check_first_read, open_store
from .pack import one_thread, write_store
from .reader import read_tensors
from .shapes import layer_tensor_name

KEPT_KEYS = ("quant", "embeddings_from_target")


def needs_repack(store) -> bool:
    layout = store.int4_layout
    return layout is not None and layout.get("layout") != int4_layout.current_layout()


def repack_store(path: str | Path, progress: bool = True) -> bool:
    """Rewrite the store at `path` for this machine's int4 layout; False if it already fits."""
    store = open_store(path)
    if not needs_repack(store):
        return False
    recorded = store.int4_layout.get("layout")
    if recorded not in int4_layout.KNOWN_LAYOUTS:
        raise StoreError(f"{store.path}: its int4 bytes use layout {recorded!r}, which this "
                         f"version cannot convert; pack the store again from its source file "
                         f"on this machine (`specdec pack SRC OUT`).")
    extra = {k: store.manifest[k] for k in KEPT_KEYS if k in store.manifest}
    with one_thread():
        write_store(store.config, store.generation_config, _converted(store), store.path,
                    store.dtype or "bfloat16", estimate=store.weights_nbytes, progress=progress,
                    overwrite=True, tokenizer=lambda d: _copy_tokenizer(store, d),
                    source=store.manifest.get("source", ""), extra=extra)
    return True


def _converted(store) -> Iterator[tuple[str, object]]:
    for index, meta in store.weight_files():
        values = read_tensors(store.path / meta.name, meta.tensors, meta.size, repack=True,
                              check=lambda buf, name=meta.name: check_first_read(store, name, buf))
        for rel, value in values.items():
            yield (rel if index is None else layer_tensor_name(index, rel)), value


def _copy_tokenizer(store, target: Path) -> bool:
    if store.tokenizer_dir is None:
        return False
    shutil.copytree(store.tokenizer_dir, target, dirs_exist_ok=True)
    return True
