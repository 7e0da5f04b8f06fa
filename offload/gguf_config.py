"""The parts of a Gemma 2 / Gemma 3 / Phi-3 / Qwen MoE config that transformers' GGUF reader drops.

transformers maps a GGUF's sizes and rope base onto a config but not these families' extras;
a config without them would compute a different model. They come from the GGUF's metadata
(and Phi-3's rope factor tensors) here, and where llama.cpp hardcodes a value instead of
storing it, from the same rule llama.cpp applies (llama-model.cpp):
- query_pre_attn_scalar: hidden_size / heads for the 27B models (46 layers for Gemma 2, 62 for
  Gemma 3), else head_dim;
- the local layers' pattern: every other layer (Gemma 2), five local for one global (Gemma 3),
  unless the file says otherwise; Gemma 3's local rope base 10000 unless the file says otherwise.
"""
from __future__ import annotations

GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
LOCAL, GLOBAL = "sliding_attention", "full_attention"


class GGUFConfigError(ValueError):
    """GGUF metadata that cannot describe a model; the message names the key."""


def family_config(reader, arch: str, config: dict) -> dict:
    """`config` (from transformers' GGUF reader) completed for `arch`; other archs unchanged."""
    if arch in GEMMA_27B_LAYERS:
        return _gemma(reader, arch, dict(config))
    if arch == "phi3":
        return _phi3(reader, dict(config))
    if arch in QWEN_MOE_ARCHS:
        return _qwen_moe(reader, arch, dict(config))
    if arch == "llama" and _field(reader, "llama.expert_count"):
        return _mixtral(reader, dict(config))
    return config


def _mixtral(reader, cfg: dict) -> dict:
    """llama.cpp writes Mixtral as a llama model with experts (merged ffn_*_exps tensors)."""
    cfg.update(model_type="mixtral", architectures=["MixtralForCausalLM"],
               num_local_experts=int(_field(reader, "llama.expert_count")),
               num_experts_per_tok=int(_field(reader, "llama.expert_used_count", 2)),
               sliding_window=None)  # released Mixtral models have none; llama.cpp stores none
    for key in ("mlp_bias", "pretraining_tp"):
        cfg.pop(key, None)
    return cfg


QWEN_MOE_ARCHS = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}


def _qwen_moe(reader, arch: str, cfg: dict) -> dict:
    width = _field(reader, f"{arch}.expert_feed_forward_length")
    if width is None:
        raise GGUFConfigError(f"{arch}.expert_feed_forward_length is missing: the experts' width is "
                              "unknown. The GGUF is corrupt.")
    cfg.update(model_type=QWEN_MOE_ARCHS[arch], moe_intermediate_size=int(width),
               norm_topk_prob=arch == "qwen3moe", decoder_sparse_step=1, mlp_only_layers=[])
    if arch == "qwen2moe":
        shared = _field(reader, f"{arch}.expert_shared_feed_forward_length")
        if shared is None:
            raise GGUFConfigError(f"{arch}.expert_shared_feed_forward_length is missing: the shared "
                                  "expert's width is unknown. The GGUF is corrupt.")
        cfg.update(shared_expert_intermediate_size=int(shared), qkv_bias=True)
    return cfg


def _field(reader, key: str, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _gemma(reader, arch: str, cfg: dict) -> dict:
    get = lambda key, default=None: _field(reader, f"{arch}.{key}", default)  # noqa: E731
    layers, heads, hidden = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    head_dim = get("attention.key_length", cfg.get("head_dim") or hidden // heads)
    cfg.update(model_type="gemma2" if arch == "gemma2" else "gemma3_text", head_dim=head_dim,
               query_pre_attn_scalar=hidden // heads if layers == GEMMA_27B_LAYERS[arch] else head_dim,
               final_logit_softcapping=get("final_logit_softcapping"),
               attn_logit_softcapping=get("attn_logit_softcapping") if arch == "gemma2" else None,
               layer_types=_layer_types(get("attention.sliding_window_pattern"), layers,
                                        2 if arch == "gemma2" else 6))
    cfg.pop("sliding_window_pattern", None)
    theta = float(get("rope.freq_base", 10000.0 if arch == "gemma2" else 1_000_000.0))
    full = {"rope_type": "default", "rope_theta": theta}
    scaling = get("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise GGUFConfigError(f"{arch}.rope.scaling.type={scaling!r} is not supported for "
                                  f"{arch} (supported: linear).")
        full = {"rope_type": "linear", "rope_theta": theta, "factor": float(get("rope.scaling.factor"))}
    local = {"rope_type": "default", "rope_theta": float(get("rope.freq_base_swa", 10000.0))}
    cfg["rope_parameters"] = full if arch == "gemma2" else {GLOBAL: full, LOCAL: local}
    for key in ("rope_theta", "rope_scaling", "rope_local_base_freq"):
        cfg.pop(key, None)
    return cfg


def _layer_types(pattern, layers: int, period: int) -> list[str]:
    """An int pattern is the period (every period-th layer global); a list marks each layer."""
    if isinstance(pattern, list):
        if len(pattern) != layers:
            raise GGUFConfigError(f"attention.sliding_window_pattern lists {len(pattern)} layers, "
                                  f"the model has {layers}; the GGUF is corrupt.")
        return [LOCAL if local else GLOBAL for local in pattern]
    period = int(pattern) if pattern else period
    return [LOCAL if (i + 1) % period else GLOBAL for i in range(layers)]


def _phi3(reader, cfg: dict) -> dict:
    get = lambda key, default=None: _field(reader, f"phi3.{key}", default)  # noqa: E731
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rotary = get("rope.dimension_count", head_dim)
    window = get("attention.sliding_window", 0)
    cfg.update(partial_rotary_factor=rotary / head_dim, sliding_window=window or None)
    rope = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0)),
            "partial_rotary_factor": rotary / head_dim}
    factors = {t.name: t for t in reader.tensors if t.name.startswith("rope_factors_")}
    if factors:
        original = int(get("rope.scaling.original_context_length", cfg["max_position_embeddings"]))
        rope.update(rope_type="longrope", original_max_position_embeddings=original,
                    short_factor=_factor_list(factors, "rope_factors_short.weight"),
                    long_factor=_factor_list(factors, "rope_factors_long.weight"))
        attention = get("rope.scaling.attn_factor")
        if attention is not None:
            rope["attention_factor"] = float(attention)
        cfg["original_max_position_embeddings"] = original
    cfg["rope_parameters"] = rope
    cfg.pop("rope_scaling", None)
    return cfg


def _factor_list(factors: dict, name: str) -> list[float]:
    if name not in factors:
        raise GGUFConfigError(f"the GGUF has {', '.join(factors)} but not {name}; LongRoPE needs "
                              "both the short and the long factors. The GGUF is corrupt.")
    return [float(v) for v in factors[name].data.reshape(-1)]
