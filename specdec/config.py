"""Model arguments read from a Hugging Face config.json (llama, mistral, qwen2, qwen3).

Handles both the transformers-4 spelling (rope_theta + rope_scaling) and the
transformers-5 one (rope_parameters). Anything we cannot compute exactly is refused
here, before any weight is read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
FIX_CONFIG = "The config is corrupt; restore it from the original model download."
# Sizes past these are not models but corrupt numbers (and would overflow tensor shapes).
MAX_DIM = 1 << 20
MAX_VOCAB = 1 << 24


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
    def from_hf(cls, cfg: dict, source: str = "config.json", fix: str = FIX_CONFIG) -> "ModelArgs":
        """`fix` ends every error about a corrupt value (a store says: re-pack)."""
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: the model config is not a JSON object. {fix}")
        model_type = cfg.get("model_type")
        if model_type is None:
            raise ConfigError(f"{source}: model_type is missing. {fix}")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported. specdec runs "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (SmolLM2 and TinyLlama are llama). "
                "Pick a model of one of these families.")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (only silu).")
        pos = lambda key, default=None, limit=MAX_DIM: _positive_int(  # noqa: E731
            cfg, key, source, default, limit, fix)
        hidden = pos("hidden_size")
        heads = pos("num_attention_heads")
        kv_heads = pos("num_key_value_heads", default=heads)
        if heads % kv_heads:
            raise ConfigError(f"{source}: num_attention_heads ({heads}) must be a multiple of "
                              f"num_key_value_heads ({kv_heads}). {fix}")
        if cfg.get("head_dim") is None and hidden % heads:
            raise ConfigError(f"{source}: hidden_size ({hidden}) is not a multiple of "
                              f"num_attention_heads ({heads}) and no head_dim is given. {fix}")
        head_dim = pos("head_dim", default=hidden // heads)
        theta, scaling = _rope(cfg, source, fix)
        return cls(
            model_type=model_type,
            vocab_size=pos("vocab_size", limit=MAX_VOCAB),
            hidden_size=hidden,
            intermediate_size=pos("intermediate_size"),
            num_layers=pos("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=_number(cfg, "rms_norm_eps", 1e-6, source, fix, positive=True),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=pos("max_position_embeddings", default=4096, limit=1 << 40),
            tie_word_embeddings=_flag(cfg, "tie_word_embeddings", False, source, fix),
            attention_bias=_flag(cfg, "attention_bias", model_type == "qwen2", source, fix),
            mlp_bias=_flag(cfg, "mlp_bias", False, source, fix),
            qk_norm=model_type == "qwen3",
            sliding_window=_sliding_window(cfg, model_type, source, fix),
        )


def _positive_int(cfg: dict, key: str, source: str, default: int | None = None,
                  limit: int = MAX_DIM, fix: str = FIX_CONFIG) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(f"{source}: {key} is missing. The config is incomplete; restore it "
                          "from the original model download.")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{source}: {key} must be a positive integer, got {value!r}. {fix}")
    if value > limit:
        raise ConfigError(f"{source}: {key}={value} is implausibly large (over {limit}). {fix}")
    return value


def _number(cfg: dict, key: str, default: float, source: str, fix: str, positive: bool = False,
            where: str = "") -> float:
    value = cfg.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        need = "a positive number" if positive else "a number >= 0"
        raise ConfigError(f"{source}: {where}{key} must be {need}, got {value!r}. {fix}")
    return float(value)


def _flag(cfg: dict, key: str, default: bool, source: str, fix: str) -> bool:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}. {fix}")
    return value


def _rope(cfg: dict, source: str, fix: str = FIX_CONFIG) -> tuple[float, dict | None]:
    for key in ("rope_parameters", "rope_scaling"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise ConfigError(f"{source}: {key} must be a JSON object or null, got {cfg[key]!r}. {fix}")
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    theta = _number(params if "rope_theta" in params else cfg, "rope_theta", 10000.0, source, fix,
                    positive=True)
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"{source}: rope scaling {rope_type!r} is not supported "
                          f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)}).")
    if rope_type == "default":
        return theta, None
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise ConfigError(f"{source}: llama3 rope scaling lacks {', '.join(missing)}.")
    values = {k: _number(scaling, k, None, source, fix, positive=True, where="rope scaling ")
              for k in keys}
    return theta, values


def _sliding_window(cfg: dict, model_type: str, source: str = "config.json",
                    fix: str = FIX_CONFIG) -> int | None:
    if model_type in ("qwen2", "qwen3"):
        # Qwen's per-layer window (max_window_layers) is off in every released model.
        if cfg.get("use_sliding_window", False):
            raise ConfigError("use_sliding_window=true is not supported for qwen models; "
                              "set it to false in config.json (released Qwen models ship it off).")
        return None
    if not cfg.get("sliding_window"):
        return None  # null or 0: no window
    return _positive_int(cfg, "sliding_window", source, limit=1 << 40, fix=fix)
