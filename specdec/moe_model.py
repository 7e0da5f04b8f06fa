"""The mixture-of-experts decoders: the Llama decoder (model.Transformer) with the dense MLP
replaced by the routed one (specdec/moe.py). Qwen3-MoE (per-head q/k norms), Qwen2-MoE (q/k/v
biases, a shared expert) and Mixtral (Mistral's sliding window) need nothing else; OLMoE
normalises q and k over the whole projection before splitting heads, and may clamp q/k/v
(transformers' OlmoeAttention)."""
from __future__ import annotations

import torch

from .model import Transformer, linear, rms_norm
from .moe import read_ahead, routed_mlp


class MoeTransformer(Transformer):
    """Qwen3-MoE, Qwen2-MoE and Mixtral. `routing_observer` (None, or a callable(layer, ids)
    such as specdec.moe_routing.RoutingTrace) sees every layer's routing."""
    routing_observer = None

    def _layer(self, h, w, i, cache, rope, mask) -> torch.Tensor:
        a, (cos, sin) = self.args, rope
        h = h + self._attention(rms_norm(h, w["input_layernorm.weight"], a.rms_norm_eps), w, i, cache,
                                cos, sin, mask)
        x = rms_norm(h, w["post_attention_layernorm.weight"], a.rms_norm_eps)
        observer = self.routing_observer
        observe = None if observer is None else lambda ids: observer(i, ids)
        ahead = lambda: read_ahead(w, h, a.experts_per_token, a.rms_norm_eps)  # noqa: E731
        return h + routed_mlp(x, w, a.experts_per_token, a.norm_topk_prob, observe, ahead)


class OlmoeTransformer(MoeTransformer):
    """OLMoE: q/k norms over the whole projection, optional clamp of q, k and v."""

    def _heads(self, x, w) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, n = self.args, x.shape[0]
        q = rms_norm(linear(x, w["self_attn.q_proj.weight"]), w["self_attn.q_norm.weight"], a.rms_norm_eps)
        k = rms_norm(linear(x, w["self_attn.k_proj.weight"]), w["self_attn.k_norm.weight"], a.rms_norm_eps)
        v = linear(x, w["self_attn.v_proj.weight"])
        if a.clip_qkv is not None:
            q, k, v = (t.clamp(-a.clip_qkv, a.clip_qkv) for t in (q, k, v))
        return (q.view(n, a.num_heads, a.head_dim).transpose(0, 1),  # [heads, T, dim]
                k.view(n, a.num_kv_heads, a.head_dim).transpose(0, 1),
                v.view(n, a.num_kv_heads, a.head_dim).transpose(0, 1))


def moe_decoder_class(args) -> type[MoeTransformer]:
    return OlmoeTransformer if args.whole_qk_norm else MoeTransformer
