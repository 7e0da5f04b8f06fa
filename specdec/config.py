"""Model arguments read from a Hugging Face config.json (llama, mistral, qwen2, qwen3).

Handles both the transformers-4 spelling (rope_theta + rope_scaling) and the
transformers-5 one (rope_parameters). Anything we cannot compute exactly is refused
here, before any weight is read.
"""
from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "llama3")


class ConfigError(ValueError):
    """A model config we cannot run; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class ModelArgs:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # llama3 parameters, or None for default rope
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections have a bias (qwen2; optional in llama)
    mlp_bias: bool
    qk_norm: bool  # RMSNorm on q and k per head before rope (qwen3)
    sliding_window: int | None  # keys further back than this are not attended (mistral)

    @classmethod
    def from_hf(cls, cfg: dict, source: str = "config.json") -> "ModelArgs":
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported. specdec runs "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (SmolLM2 and TinyLlama are llama). "
                "Pick a model of one of these families.")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (only silu).")
        hidden = _positive_int(cfg, "hidden_size", source)
        heads = _positive_int(cfg, "num_attention_heads", source)
        kv_heads = _positive_int(cfg, "num_key_value_heads", source, default=heads)
        if heads % kv_heads:
            raise ConfigError(f"{source}: num_attention_heads ({heads}) must be a multiple of "
                              f"num_key_value_heads ({kv_heads}). The config is corrupt.")
        head_dim = cfg.get("head_dim") or hidden // heads
        theta, scaling = _rope(cfg, source)
        return cls(
            model_type=model_type,
            vocab_size=_positive_int(cfg, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=_positive_int(cfg, "intermediate_size", source),
            num_layers=_positive_int(cfg, "num_hidden_layers", source),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=_positive_int(cfg, "max_position_embeddings", source, default=4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_window=_sliding_window(cfg, model_type),
        )


def _positive_int(cfg: dict, key: str, source: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(f"{source}: {key} is missing. The config is incomplete; restore it "
                          "from the original model download.")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{source}: {key} must be a positive integer, got {value!r}. "
                          "The config is corrupt; restore it from the original model download.")
    return value


def _rope(cfg: dict, source: str) -> tuple[float, dict | None]:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"{source}: rope scaling {rope_type!r} is not supported "
                          f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)}).")
    if rope_type == "default":
        return theta, None
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise ConfigError(f"{source}: llama3 rope scaling lacks {', '.join(missing)}.")
    return theta, {k: float(scaling[k]) for k in keys}


def _sliding_window(cfg: dict, model_type: str) -> int | None:
    if model_type in ("qwen2", "qwen3"):
        # Qwen's per-layer window (max_window_layers) is off in every released model.
        if cfg.get("use_sliding_window", False):
            raise ConfigError("use_sliding_window=true is not supported for qwen models; "
                              "set it to false in config.json (released Qwen models ship it off).")
        return None
    window = cfg.get("sliding_window")
    return int(window) if window else None
