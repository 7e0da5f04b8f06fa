"""ModelArgs' mixture-of-experts fields for Qwen3-MoE, Qwen2-MoE, Mixtral and OLMoE configs.

Each family's attention is the Llama family's (Qwen3-MoE: per-head q/k norms like Qwen3;
Qwen2-MoE: q/k/v biases like Qwen2; Mixtral: Mistral's sliding window; OLMoE: q/k norms over the
whole projection and an optional clamp of q/k/v); the dense MLP becomes a router over
`num_experts` MLPs of which `experts_per_token` run per token (specdec/moe.py). What transformers'
config classes default differs per family and is followed here: Mixtral always renormalises the
top-k probabilities, the others only with norm_topk_prob; only Qwen2-MoE has a shared expert.
"""
from __future__ import annotations

from .config_values import ConfigError, _flag, _number, _positive_int

MOE_TYPES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe")
# Where each family's config keeps the expert count and the experts' MLP width.
EXPERT_COUNT_KEYS = {"mixtral": ("num_local_experts",), "qwen3_moe": ("num_experts", "num_local_experts"),
                     "qwen2_moe": ("num_experts",), "olmoe": ("num_experts",)}
EXPERT_WIDTH_KEY = {"mixtral": "intermediate_size", "olmoe": "intermediate_size",
                    "qwen3_moe": "moe_intermediate_size", "qwen2_moe": "moe_intermediate_size"}


def moe_fields(cfg: dict, model_type: str, source: str, fix: str) -> dict:
    """The MoE fields of ModelArgs for `model_type` (one of MOE_TYPES); ConfigError if the
    config asks for something the decoder does not compute."""
    _check_all_layers_sparse(cfg, source)
    key = next((k for k in EXPERT_COUNT_KEYS[model_type] if cfg.get(k) is not None),
               EXPERT_COUNT_KEYS[model_type][0])
    experts = _positive_int(cfg, key, source, None, 1 << 16, fix)
    top_k = _positive_int(cfg, "num_experts_per_tok", source, None, 1 << 16, fix)
    if top_k > experts:
        raise ConfigError(f"{source}: num_experts_per_tok={top_k} is more than the {experts} experts "
                          f"({key}). {fix}")
    out = dict(num_experts=experts, experts_per_token=top_k,
               expert_intermediate_size=_positive_int(cfg, EXPERT_WIDTH_KEY[model_type], source,
                                                      None, 1 << 20, fix),
               norm_topk_prob=model_type == "mixtral" or _flag(cfg, "norm_topk_prob", False, source, fix))
    if model_type == "qwen2_moe":
        out["shared_expert_intermediate_size"] = _positive_int(
            cfg, "shared_expert_intermediate_size", source, None, 1 << 20, fix)
    if model_type == "olmoe":
        clip = cfg.get("clip_qkv")
        out["clip_qkv"] = None if clip is None else _number(cfg, "clip_qkv", None, source, fix, positive=True)
    return out


def _check_all_layers_sparse(cfg: dict, source: str) -> None:
    # Qwen's configs can make some layers dense (decoder_sparse_step, mlp_only_layers); no
    # released Qwen MoE model does, and the store keeps one layout for every layer.
    step, dense = cfg.get("decoder_sparse_step", 1), cfg.get("mlp_only_layers") or []
    if step not in (None, 1) or dense:
        raise ConfigError(f"{source}: decoder_sparse_step={step!r} / mlp_only_layers={dense!r} mix "
                          "dense and mixture-of-experts layers, which specdec does not run (released "
                          "Qwen MoE models use 1 and []). Use a model whose every layer is sparse.")

