"""Tiny random models built with transformers' config classes and saved as safetensors:
the targets and drafts most tests run on."""
from __future__ import annotations

import torch

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def tiny_config(family: str, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig,
           "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    kwargs = dict(TINY)
    if family == "qwen3":
        kwargs["head_dim"] = 16
    if family == "llama":
        kwargs["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    kwargs.update(overrides)
    return cls(**kwargs)


def make_tiny_model(path, family: str = "llama", seed: int = 0, **overrides):
    """Save a random tiny HF model (safetensors) to `path`; return the transformers model."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=torch.float32)
    # Random init leaves norms at 1 and biases at 0; perturb them so tests exercise them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return model


def make_noised_copy(src, dst, scale: float, seed: int = 0):
    """Copy a saved tiny model with gaussian noise (relative `scale`) on every weight:
    a draft that agrees with the target some of the time."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(f"{dst}/model.safetensors")
    g = torch.Generator().manual_seed(seed)
    noised = {k: v + torch.randn(v.shape, generator=g) * v.std().clamp_min(1e-3) * scale
              for k, v in state.items()}
    save_file(noised, f"{dst}/model.safetensors", metadata={"format": "pt"})
    return dst


def make_tiny_pair(root):
    """A tiny Llama target (no eos: runs never stop early) at root/target and a draft that
    agrees with it some of the time (5% noise) at root/draft; returns the two paths."""
    make_tiny_model(root / "target", "llama", eos_token_id=None)
    make_noised_copy(root / "target", root / "draft", scale=0.05, seed=1)
    return root / "target", root / "draft"


def sharpen_lm_head(path, factor: float):
    """Scale a saved model's lm_head so its next-token distributions are peaked, not
    near-uniform as at random init (makes sampling tests meaningful)."""
    from safetensors.torch import load_file, save_file

    state = load_file(f"{path}/model.safetensors")
    state["lm_head.weight"] = state["lm_head.weight"] * factor
    save_file(state, f"{path}/model.safetensors", metadata={"format": "pt"})


def make_tiny_chat_model(path, tokenizer_dir, family="llama", seed=0, **overrides):
    """A tiny random model with the SmolLM2 vocabulary and tokenizer files beside it."""
    import shutil

    model = make_tiny_model(path, family, seed=seed, vocab_size=49152, **overrides)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, path / f.name)
    return model


def write_borrowing_draft(target, draft, ids, **config):
    """`draft`: the layers of the HF dir `target`, with no embedding table or lm_head of its
    own (it borrows the target's) and scoring only `ids`; `config`: keys changed from the
    target's config.json."""
    import json

    from safetensors.torch import load_file, save_file

    from specdec.loading import DRAFT_SIDECAR
    from specdec.weights import OUTPUT_IDS

    draft.mkdir()
    state = load_file(f"{target}/model.safetensors")
    del state["model.embed_tokens.weight"], state["lm_head.weight"]
    state[OUTPUT_IDS] = torch.tensor(ids, dtype=torch.int32)
    save_file(state, f"{draft}/model.safetensors", metadata={"format": "pt"})
    base = json.loads((target / "config.json").read_text())
    (draft / "config.json").write_text(json.dumps({**base, **config}))
    (draft / DRAFT_SIDECAR).write_text(json.dumps({"embeddings_from_target": True}))
    return draft
