"""A Hugging Face config.json as the text decoder it describes, with nothing left implicit.

Two things transformers does in its config classes that a plain dict does not:
- Gemma 3 checkpoints of `Gemma3ForConditionalGeneration` (4B/12B/27B) nest the text decoder
  in `text_config` beside a vision tower; its tensors are named `language_model.model.*`
  (or `model.language_model.*` when saved by transformers 5). specdec runs the text decoder:
  the config is flattened and the tensors renamed here, the vision tensors skipped.
- Hub configs leave many values to the config class's defaults (a Gemma 3 27B config.json has
  no vocab_size, rope_theta or sliding_window_pattern). They are filled in here from the same
  defaults, so every reader of the config (the packer's size estimate, the shape checks, the
  decoder's arguments) sees the same complete dict.
Plain dicts in, plain dicts out; no torch, no specdec.
"""
from __future__ import annotations

# The defaults of transformers' Gemma2Config / Gemma3TextConfig / Phi3Config for the values
# that change the arithmetic (sizes such as hidden_size must be in the file: never guessed).
FAMILY_DEFAULTS = {
    "gemma2": dict(vocab_size=256000, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                   max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
                   query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0, attention_bias=False),
    "gemma3_text": dict(vocab_size=262208, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                        max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=True,
                        query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6,
                        final_logit_softcapping=None, attn_logit_softcapping=None,
                        attention_bias=False, rope_local_base_freq=10000.0),
    "phi3": dict(vocab_size=32064, hidden_act="silu", max_position_embeddings=4096,
                 rms_norm_eps=1e-5, tie_word_embeddings=False),
}
# Default rope base when the config gives neither rope_theta nor rope_parameters.
DEFAULT_THETA = {"gemma2": 10000.0, "gemma3_text": 1_000_000.0, "phi3": 10000.0}
# Tensors of a multimodal checkpoint that belong to its vision tower: not the text decoder's.
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                   "model.multi_modal_projector.")
TEXT_PREFIXES = {"language_model.model.": "model.", "language_model.lm_head.": "lm_head.",
                 "model.language_model.": "model."}


def text_decoder_config(cfg: dict) -> dict:
    """`cfg` with a Gemma 3 multimodal config flattened to its text decoder and the family's
    implicit defaults written out. Any other config comes back unchanged (the same object)."""
    if not isinstance(cfg, dict):
        return cfg
    if cfg.get("model_type") == "gemma3" and isinstance(cfg.get("text_config"), dict):
        cfg = _gemma3_text_part(cfg)
    defaults = FAMILY_DEFAULTS.get(cfg.get("model_type"))
    if defaults is None:
        return cfg
    out = dict(cfg)
    for key, value in defaults.items():
        out.setdefault(key, value)
    if not out.get("rope_parameters") and out.get("rope_theta") is None:
        out["rope_theta"] = DEFAULT_THETA[out["model_type"]]
    return out


def _gemma3_text_part(cfg: dict) -> dict:
    text = dict(cfg["text_config"])
    text["model_type"] = "gemma3_text"
    text["architectures"] = ["Gemma3ForCausalLM"]
    # Token ids and tying live at the top level of the multimodal config.
    for key in ("tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        if key in cfg and key not in text:
            text[key] = cfg[key]
    return text


def text_tensor_name(name: str) -> str | None:
    """A checkpoint tensor's name in the text decoder (None: a vision-tower tensor, skipped)."""
    if name.startswith(VISION_PREFIXES):
        return None
    for prefix, replacement in TEXT_PREFIXES.items():
        if name.startswith(prefix):
            return replacement + name[len(prefix):]
    return name
