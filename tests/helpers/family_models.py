"""Tiny random Gemma 2 / Gemma 3 / Phi-3 and mixture-of-experts (Qwen3-MoE, Qwen2-MoE, Mixtral,
OLMoE) models, one per variant flag, saved as safetensors with transformers' own config
classes (the reference for every parity test)."""
from __future__ import annotations

import torch

BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            initializer_range=0.1)  # larger weights than the default: caps and windows matter
GEMMA = dict(head_dim=16, query_pre_attn_scalar=20, pad_token_id=0, bos_token_id=2, eos_token_id=1)
LOCAL, GLOBAL = "sliding_attention", "full_attention"
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.3, 1.7, 2.2],
            "long_factor": [2.0, 3.5, 5.0, 9.0]}

# name -> (config class name, keyword arguments). Each flag of the issue has a variant.
VARIANTS = {
    "gemma2": ("Gemma2Config", dict(**GEMMA, sliding_window=6, attn_logit_softcapping=2.0,
                                    final_logit_softcapping=3.0)),
    "gemma2-nocap": ("Gemma2Config", dict(**GEMMA, sliding_window=6, attn_logit_softcapping=None,
                                          final_logit_softcapping=None)),
    "gemma3": ("Gemma3TextConfig", dict(**GEMMA, sliding_window=6, layer_types=[LOCAL, GLOBAL, LOCAL],
                                        rope_parameters={GLOBAL: {"rope_type": "linear", "factor": 8.0,
                                                                  "rope_theta": 1e6},
                                                         LOCAL: {"rope_type": "default",
                                                                 "rope_theta": 1e4}})),
    "gemma3-cap": ("Gemma3TextConfig", dict(**GEMMA, sliding_window=6, sliding_window_pattern=2,
                                            final_logit_softcapping=3.0)),
    "phi3": ("Phi3Config", dict(sliding_window=8, partial_rotary_factor=0.5, pad_token_id=0,
                                bos_token_id=2, eos_token_id=1)),
    "phi3-longrope": ("Phi3Config", dict(max_position_embeddings=128, original_max_position_embeddings=32,
                                         rope_parameters={**LONGROPE, "partial_rotary_factor": 0.5},
                                         partial_rotary_factor=0.5, pad_token_id=0, bos_token_id=2,
                                         eos_token_id=1)),
}
# Mixture of experts: 8 experts of which 2 run per token.
MOE = dict(num_experts_per_tok=2, pad_token_id=0, bos_token_id=2, eos_token_id=1)
MOE_VARIANTS = {
    "qwen3_moe": ("Qwen3MoeConfig", dict(**MOE, num_experts=8, moe_intermediate_size=32, norm_topk_prob=True)),
    "qwen3_moe-unnormed": ("Qwen3MoeConfig", dict(**MOE, num_experts=8, moe_intermediate_size=32,
                                                  norm_topk_prob=False)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(**MOE, num_experts=8, moe_intermediate_size=32,
                                         shared_expert_intermediate_size=40)),
    "mixtral": ("MixtralConfig", dict(**MOE, num_local_experts=8, intermediate_size=48, sliding_window=6)),
    "olmoe": ("OlmoeConfig", dict(**MOE, num_experts=8, intermediate_size=48, clip_qkv=3.0)),
}
VARIANTS.update(MOE_VARIANTS)


def family_config(variant: str, **overrides):
    import copy

    import transformers

    cls_name, kwargs = VARIANTS[variant]  # copied: config classes fill in their dicts in place
    return getattr(transformers, cls_name)(**copy.deepcopy({**BASE, **kwargs, **overrides}))


def make_family_model(path, variant: str, seed: int = 0, **overrides):
    """Save a random tiny model of `variant` to `path`; return the transformers model (eval)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(variant, **overrides), dtype=torch.float32)
    with torch.no_grad():  # norms start at 0 (gemma: 1 + w) or 1: perturb them so they count
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return model
