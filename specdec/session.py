"""load(): put a target (in RAM or streamed) and an optional draft together."""
from __future__ import annotations

from pathlib import Path

from .api import SpecDecoder
from .loading import load_resident, parse_dtype


def load(target: str | Path | None = None, draft: str | Path | None = None, ram=None,
         dtype="bfloat16", max_context: int | None = None, k: int | None = None) -> SpecDecoder:
    """A decoder for `target`, with `draft` proposing tokens (None: plain decoding).

    target: a Hugging Face directory (safetensors), a .gguf file, or a packed store.
    ram: RAM budget ("4GB"); given (or target is a store), the target streams from disk.
    dtype: "bfloat16" (default) or "float32" (exact comparisons).
    max_context: KV cache length (default: the model's, capped at 4096).
    k: fixed number of drafted tokens per pass (default: adaptive).
    """
    if target is None:
        raise ValueError("load() needs a target path")
    torch_dtype = parse_dtype(dtype)
    tgt = load_resident(target, torch_dtype)
    drf = load_resident(draft, torch_dtype, embeddings_from=tgt) if draft is not None else None
    ctx = max_context or min(tgt.args.max_position_embeddings, 4096)
    return SpecDecoder(tgt, drf, ctx, k=k)
