"""Model arguments read from a Hugging Face config.json (llama, mistral, qwen2, qwen3; the
Gemma 2/3 and Phi-3 options are parsed in specdec/family_config.py, the mixture-of-experts
families' (qwen3_moe, qwen2_moe, mixtral, olmoe) in specdec/moe_config.py).

Handles both the transformers-4 spelling (rope_theta + rope_scaling) and the
transformers-5 one (rope_parameters). Anything we cannot compute exactly is refused
here, before any weight is read.
"""
from __future__ import annotations

from dataclasses import dataclass

from offload.hf_config import text_decoder_config

from .config_values import (FIX_CONFIG, MAX_DIM, MAX_VOCAB, ConfigError, _flag, _number,  # noqa: F401
                            _check_heads, _positive_int)
from .family_config import family_args
from .moe_config import MOE_TYPES, moe_fields

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text", "phi3",
                         *MOE_TYPES)
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
QK_NORM_TYPES = ("qwen3", "qwen3_moe", "olmoe")
SUPPORTED_ROPE_TYPES = ("default", "llama3")


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
    # Gemma 2/3 and Phi-3 (specdec/family_config.py); the defaults are the Llama family's.
    hidden_act: str = "silu"  # "gelu_tanh": gemma's GeGLU
    query_pre_attn_scalar: float | None = None  # scores scaled by its -1/2 power (None: head_dim's)
    attn_logit_softcapping: float | None = None  # scores -> cap * tanh(scores / cap) (gemma2)
    final_logit_softcapping: float | None = None  # the same on the output logits
    local_layers: tuple[int, ...] = ()  # layers that attend only within local_window (gemma)
    local_window: int | None = None
    local_rope: dict | None = None  # rope of the local layers when it differs (gemma3)
    rotary_dim: int | None = None  # rope on the first rotary_dim of each head only (phi3)
    # Mixture of experts (specdec/moe_config.py, specdec/moe.py); 0 experts: a dense MLP.
    num_experts: int = 0
    experts_per_token: int = 0  # top-k routed experts per token
    expert_intermediate_size: int = 0
    norm_topk_prob: bool = False  # the top-k routing weights renormalised to sum to one
    shared_expert_intermediate_size: int = 0  # qwen2_moe: an always-on expert behind a sigmoid gate
    whole_qk_norm: bool = False  # olmoe: q/k norms over the whole projection, not per head
    clip_qkv: float | None = None  # olmoe: q, k, v clamped to [-clip, clip]

    @property
    def family(self) -> str:
        """Which decoder runs these args: "llama" (llama, mistral, qwen2/3), "gemma", "phi3" or
        "moe" (qwen3_moe, qwen2_moe, mixtral, olmoe)."""
        if self.model_type in LLAMA_FAMILY:
            return "llama"
        if self.model_type in MOE_TYPES:
            return "moe"
        return "phi3" if self.model_type == "phi3" else "gemma"

    @classmethod
    def from_hf(cls, cfg: dict, source: str = "config.json", fix: str = FIX_CONFIG) -> "ModelArgs":
        """`fix` ends every error about a corrupt value (a store says: re-pack)."""
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: the model config is not a JSON object. {fix}")
        cfg = text_decoder_config(cfg)  # gemma3's text part; family defaults written out
        model_type = cfg.get("model_type")
        if model_type is None:
            raise ConfigError(f"{source}: model_type is missing. {fix}")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported{_unsupported_hint(model_type)}. "
                f"specdec runs {', '.join(SUPPORTED_MODEL_TYPES)} (SmolLM2 and TinyLlama are llama; "
                "Gemma 3 checkpoints with a vision tower run as text models; Phi-4 is phi3). "
                "Pick a model of one of these families.")
        if model_type not in LLAMA_FAMILY + MOE_TYPES:
            return family_args(cls, cfg, model_type, source, fix)
        extra = moe_fields(cfg, model_type, source, fix) if model_type in MOE_TYPES else {}
        if cfg.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (only silu).")
        pos = lambda key, default=None, limit=MAX_DIM: _positive_int(  # noqa: E731
            cfg, key, source, default, limit, fix)
        hidden = pos("hidden_size")
        heads = pos("num_attention_heads")
        kv_heads = pos("num_key_value_heads", default=heads)
        _check_heads(cfg, hidden, heads, kv_heads, source, fix)
        # Mixtral's config writes head_dim: null for "hidden_size / heads".
        head_dim = hidden // heads if cfg.get("head_dim") is None else pos("head_dim")
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
            attention_bias=_attention_bias(cfg, model_type, source, fix),
            mlp_bias=_flag(cfg, "mlp_bias", False, source, fix),
            qk_norm=model_type in QK_NORM_TYPES, whole_qk_norm=model_type == "olmoe",
            sliding_window=_sliding_window(cfg, model_type, source, fix),
            **extra,
        )


def _attention_bias(cfg: dict, model_type: str, source: str, fix: str) -> bool:
    if model_type == "qwen2_moe":  # transformers' Qwen2MoeConfig calls it qkv_bias (on by default)
        return _flag(cfg, "qkv_bias", _flag(cfg, "attention_bias", True, source, fix), source, fix)
    return _flag(cfg, "attention_bias", model_type == "qwen2", source, fix)


def _unsupported_hint(model_type: str) -> str:
    for prefix, hint in UNSUPPORTED_HINTS.items():
        if str(model_type).startswith(prefix):
            return f" ({hint})"
    return ""


# Variants of the supported families that are different architectures.
UNSUPPORTED_HINTS = {
    "gemma3n": "Gemma 3n's per-layer embeddings and AltUp layers are a different architecture",
    "phi3small": "Phi-3-small's blocksparse attention is a different architecture",
    "phimoe": "Phi-3.5-MoE is a mixture of experts whose router (sparsemixer) specdec does not compute",
    "gpt_oss": "gpt-oss needs attention sinks, alternating sliding windows, biased experts with a "
               "clamped SwiGLU and MXFP4 expert blocks, none of which specdec computes yet",
    "phi4mm": "Phi-4-multimodal's adapters are a different architecture",
    "phi3_v": "Phi-3-vision is a multimodal architecture",
}


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
    if model_type in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        # Qwen's per-layer window (max_window_layers) is off in every released model.
        if cfg.get("use_sliding_window", False):
            raise ConfigError("use_sliding_window=true is not supported for qwen models; "
                              "set it to false in config.json (released Qwen models ship it off).")
        return None
    if not cfg.get("sliding_window"):
        return None  # null or 0: no window
    return _positive_int(cfg, "sliding_window", source, limit=1 << 40, fix=fix)
