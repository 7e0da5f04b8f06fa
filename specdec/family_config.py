"""ModelArgs for Gemma 2, Gemma 3 (text) and Phi-3/Phi-4 configs.

What they need beyond the Llama family, as transformers' Gemma2/Gemma3Text/Phi3 modules
define it: gelu-tanh MLPs, query scaling by query_pre_attn_scalar, soft-capped scores and
logits (Gemma 2), local sliding-window layers interleaved with global ones, each kind with its
own rope (Gemma 3: rope_local_base_freq locally, optionally linear-scaled rope globally),
partial rotary dims and LongRoPE (Phi-3). The config has been through
offload.hf_config.text_decoder_config (multimodal Gemma 3 flattened, defaults filled in).
"""
from __future__ import annotations

import math

from .config_values import ConfigError, _check_heads, _flag, _number, _positive_int

GEMMA_TYPES = ("gemma2", "gemma3_text")
LOCAL, GLOBAL = "sliding_attention", "full_attention"
LONGROPE_NAMES = ("longrope", "su", "yarn")  # transformers' Phi3Config reads "su"/"yarn" as longrope


def family_args(cls, cfg: dict, model_type: str, source: str, fix: str):
    if model_type == "gemma3":  # text_decoder_config has flattened every gemma3 with a text_config
        raise ConfigError(f"{source}: model_type gemma3 without a text_config object: a Gemma 3 "
                          "multimodal config must nest its text decoder's settings there. " + fix)
    pos = lambda key, default=None, limit=1 << 20: _positive_int(  # noqa: E731
        cfg, key, source, default, limit, fix)
    hidden, heads = pos("hidden_size"), pos("num_attention_heads")
    kv_heads = pos("num_key_value_heads", default=heads)
    _check_heads(cfg, hidden, heads, kv_heads, source, fix)
    common = dict(
        model_type=model_type, vocab_size=pos("vocab_size", limit=1 << 24), hidden_size=hidden,
        intermediate_size=pos("intermediate_size"), num_layers=pos("num_hidden_layers"),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=pos("head_dim", default=hidden // heads),
        rms_norm_eps=_number(cfg, "rms_norm_eps", 1e-6, source, fix, positive=True),
        max_position_embeddings=pos("max_position_embeddings", default=4096, limit=1 << 40),
        tie_word_embeddings=_flag(cfg, "tie_word_embeddings", False, source, fix),
        attention_bias=_flag(cfg, "attention_bias", False, source, fix), mlp_bias=False)
    if model_type == "phi3":
        return cls(**common, **_phi3(cfg, common, source, fix))
    return cls(**common, **_gemma(cfg, model_type, common, source, fix))


# -- Gemma 2 / Gemma 3 ---------------------------------------------------------------------
def _gemma(cfg: dict, model_type: str, common: dict, source: str, fix: str) -> dict:
    act = cfg.get("hidden_activation") or cfg.get("hidden_act")
    if act != "gelu_pytorch_tanh":
        raise ConfigError(f"{source}: hidden_activation {act!r} is not supported for {model_type} "
                          "(only gelu_pytorch_tanh, what released Gemma models use). " + fix)
    if cfg.get("use_bidirectional_attention"):
        raise ConfigError(f"{source}: use_bidirectional_attention=true is an embedding model "
                          "(EmbeddingGemma), not a text generator; specdec runs causal Gemma models.")
    layers = common["num_layers"]
    local = _local_layers(cfg, model_type, layers, source, fix)
    window = _positive_int(cfg, "sliding_window", source, None, 1 << 40, fix) if local else None
    global_rope, local_rope = _gemma_ropes(cfg, model_type, source, fix)
    return dict(
        hidden_act="gelu_tanh", rope_theta=global_rope["rope_theta"],
        rope_scaling=global_rope if global_rope["rope_type"] != "default" else None,
        qk_norm=model_type == "gemma3_text", sliding_window=None,
        query_pre_attn_scalar=_number(cfg, "query_pre_attn_scalar", None, source, fix, positive=True),
        # transformers' Gemma 3 attention never applies attn_logit_softcapping: neither do we.
        attn_logit_softcapping=_cap(cfg, "attn_logit_softcapping", source, fix) if model_type == "gemma2" else None,
        final_logit_softcapping=_cap(cfg, "final_logit_softcapping", source, fix),
        local_layers=local, local_window=window,
        local_rope=local_rope if local_rope != global_rope else None)


def _local_layers(cfg: dict, model_type: str, layers: int, source: str, fix: str) -> tuple[int, ...]:
    """Indices of the sliding-window layers: `layer_types` if given, else the family's pattern
    (Gemma 2: every other layer from the first; Gemma 3: all but every sliding_window_pattern-th)."""
    types = cfg.get("layer_types")
    if types is None:
        period = 2 if model_type == "gemma2" else _positive_int(
            cfg, "sliding_window_pattern", source, 6, 1 << 20, fix)
        return tuple(i for i in range(layers) if (i + 1) % period)
    if not isinstance(types, list) or len(types) != layers or not set(types) <= {LOCAL, GLOBAL}:
        raise ConfigError(f"{source}: layer_types must list {layers} entries, each "
                          f"{LOCAL!r} or {GLOBAL!r}. {fix}")
    return tuple(i for i, t in enumerate(types) if t == LOCAL)


def _gemma_ropes(cfg: dict, model_type: str, source: str, fix: str) -> tuple[dict, dict]:
    """(global layers' rope, local layers' rope), each {"rope_type", "rope_theta", ...}.
    transformers 5 writes rope_parameters per layer type; transformers 4 wrote rope_theta,
    rope_scaling (global layers) and rope_local_base_freq (Gemma 3's local layers)."""
    params = cfg.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{source}: rope_parameters must be a JSON object. {fix}")
    params = params or {}
    if GLOBAL in params or LOCAL in params:
        full, local = params.get(GLOBAL) or {}, params.get(LOCAL) or {}
    else:
        scaling = cfg.get("rope_scaling") or params
        full = {**scaling, "rope_theta": params.get("rope_theta", cfg.get("rope_theta"))}
        local = {"rope_type": "default", "rope_theta": cfg.get("rope_local_base_freq")}
    if model_type == "gemma2":
        local = full  # one rope for every layer
    full = _plain_or_linear(full, cfg.get("rope_theta"), "global", source, fix)
    local = _plain_or_linear(local, cfg.get("rope_local_base_freq"), "local", source, fix)
    if local["rope_type"] != "default":
        raise ConfigError(f"{source}: rope scaling on the local (sliding-window) layers is not "
                          "supported; released Gemma models scale only the global layers.")
    return full, local


def _plain_or_linear(rope: dict, theta_fallback, kind: str, source: str, fix: str) -> dict:
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: the {kind} layers' rope parameters must be a JSON object. {fix}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", theta_fallback)
    out = {"rope_type": rope_type,
           "rope_theta": _number({"rope_theta": theta}, "rope_theta", None, source, fix, positive=True)}
    if rope_type == "linear":
        out["factor"] = _number(rope, "factor", None, source, fix, positive=True, where="rope scaling ")
    elif rope_type != "default":
        raise ConfigError(f"{source}: rope scaling {rope_type!r} on the {kind} layers is not supported "
                          "for Gemma (supported: default, linear).")
    return out


def _cap(cfg: dict, key: str, source: str, fix: str) -> float | None:
    return None if cfg.get(key) is None else _number(cfg, key, None, source, fix, positive=True)


# -- Phi-3 / Phi-4 -------------------------------------------------------------------------
def _phi3(cfg: dict, common: dict, source: str, fix: str) -> dict:
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (only silu).")
    if common["attention_bias"]:
        raise ConfigError(f"{source}: attention_bias=true is not a Phi-3 layout (its fused "
                          "qkv_proj has no bias). " + fix)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: rope_scaling must be a JSON object or null. {fix}")
    partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    partial = _number({"partial_rotary_factor": partial}, "partial_rotary_factor", None, source, fix,
                      positive=True)
    rotary_dim = int(common["head_dim"] * partial)
    if partial > 1 or rotary_dim % 2:
        raise ConfigError(f"{source}: partial_rotary_factor={partial} gives {rotary_dim} rotary "
                          f"dims of a {common['head_dim']}-dim head; it must give an even number "
                          f"no larger than the head. {fix}")
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    theta = _number({"rope_theta": theta}, "rope_theta", None, source, fix, positive=True)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if rope_type in LONGROPE_NAMES:
        scaling = _longrope(cfg, rope, rotary_dim, common["max_position_embeddings"], source, fix)
    elif rope_type != "default":
        raise ConfigError(f"{source}: rope scaling {rope_type!r} is not supported for phi3 "
                          "(supported: default, longrope/su).")
    return dict(rope_theta=theta, rope_scaling=scaling, qk_norm=False,
                sliding_window=_phi3_window(cfg, source, fix),
                rotary_dim=rotary_dim if rotary_dim != common["head_dim"] else None)


def _phi3_window(cfg: dict, source: str, fix: str) -> int | None:
    # Phi-3-mini-4k ships sliding_window=2047 and transformers applies it to every layer.
    if not cfg.get("sliding_window"):
        return None
    return _positive_int(cfg, "sliding_window", source, None, 1 << 40, fix)


def _longrope(cfg: dict, rope: dict, rotary_dim: int, max_positions: int, source: str, fix: str) -> dict:
    """LongRoPE: per-frequency divisors, `short_factor` within the original context and
    `long_factor` past it, and one attention factor on cos/sin (transformers'
    _compute_longrope_parameters)."""
    original = rope.get("original_max_position_embeddings",
                        cfg.get("original_max_position_embeddings", max_positions))
    key = "original_max_position_embeddings"
    original = _positive_int({key: original}, key, source, None, 1 << 40, fix)
    factors = {}
    for key in ("short_factor", "long_factor"):
        values = rope.get(key)
        ok = isinstance(values, list) and len(values) == rotary_dim // 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in values)
        if not ok:
            raise ConfigError(f"{source}: longrope {key} must list {rotary_dim // 2} positive numbers "
                              f"(one per rotary frequency). {fix}")
        factors[key] = tuple(float(v) for v in values)
    factor = rope.get("factor") or max_positions / original
    attention = rope.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    attention = _number({"attention_factor": attention}, "attention_factor", None, source, fix,
                        positive=True, where="rope scaling ")
    return {"rope_type": "longrope", **factors, "original_max_position_embeddings": original,
            "attention_factor": attention}
