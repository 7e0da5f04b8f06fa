"""The inflated models of `specdec bench offload`'s big workloads (specdec/bench/inflated.py
says which files each workload reads), written into the bench's cache. The bench packs their
stores itself; it does not build models."""
from __future__ import annotations

from pathlib import Path

import torch

from specdec.bench.inflated import KEEP_FREE, BIG, inflated_files, is_built

from .builder import SHAPES, draft_source, target_source, write_gguf, write_hf
from .strong import write_strong_draft


def build_workload(name: str, cache: Path, with_hf: bool = False, progress: bool = True) -> list[Path]:
    """Write what workload `name` lacks into `cache` (the bench's: <cache-dir>/bench); returns
    the files written."""
    from specdec.demo import DEMO_DRAFT_DIR

    shape = BIG[name][0]
    cache.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, path in inflated_files(name, cache, with_hf).items():
        if is_built(path):
            continue
        if kind == "draft-hf":
            write_hf(draft_source(DEMO_DRAFT_DIR, target_source()), SHAPES["inflated-draft"], path,
                     keep_free=KEEP_FREE, progress=progress)
        elif kind == "strong-draft-hf":
            write_strong_draft(path, keep_free=KEEP_FREE, progress=progress)
        elif kind == "target-hf":
            write_hf(target_source(), SHAPES[shape], path, torch.bfloat16, keep_free=KEEP_FREE,
                     progress=progress)
        else:
            write_gguf(None, SHAPES[shape], path, keep_free=KEEP_FREE, progress=progress)
        written.append(path)
    return written
