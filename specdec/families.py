"""The Gemma 2/3 and Phi-3/4 decoders: the Llama decoder (model.Transformer) with the pieces
these families change, each following transformers' modeling_gemma2/gemma3/phi3 step by step.

- Gemma: embeddings times sqrt(hidden) (rounded to the table's dtype, as transformers does);
  RMSNorm scaling by (1 + w) in float32; norms after attention and around the MLP as well as
  before; gelu-tanh MLP; scores scaled by query_pre_attn_scalar^-1/2; soft-capped scores
  (Gemma 2) and logits; local sliding-window layers between global ones, each kind with its
  own rope (Gemma 3) and qk-norm (Gemma 3).
- Phi-3: one qkv_proj and one gate_up_proj matmul per layer (the output is split, never the
  weight: a quantized weight stays one kernel call); rope on the first rotary_dim dims of each
  head; LongRoPE.

LongRoPE's two factor sets: transformers picks them per forward call (long when the call's
last position is past original_max_position_embeddings), and its Phi-3 generate drops the
cache and recomputes everything with the long factors when the text grows past that length.
Here each token picks by its own position and nothing is recomputed, so a verification pass
of many tokens equals one token at a time (speculation stays exact). That equals transformers
while the text is shorter than original_max_position_embeddings; past it the two differ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .compute.attention import attend, soft_cap
from .compute.kernels import Policy
from .config import ModelArgs
from .model import Transformer, embed, linear, rotate_half, visibility_mask

LOCAL, GLOBAL = "local", "global"


def build_model(args: ModelArgs, weights, dtype: torch.dtype = torch.bfloat16,
                kernels: Policy | None = None) -> Transformer:
    """The decoder for `args`' family; `kernels`: its matmul paths (None: F.linear)."""
    if args.family == "moe":
        from .moe_model import moe_decoder_class

        return moe_decoder_class(args)(args, weights, dtype, kernels)
    cls = {"llama": Transformer, "gemma": GemmaTransformer, "phi3": Phi3Transformer}[args.family]
    return cls(args, weights, dtype, kernels)


def rope_frequencies(theta: float, dim: int, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies [dim/2] of plain or linearly scaled rope (float32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if scaling is not None and scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    return inv_freq


def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype,
                scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, dim] in float32 times `scale`, then cast (transformers' order)."""
    inv = inv_freq if inv_freq.dim() == 2 else inv_freq[None, :]
    freqs = positions.float()[:, None] * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of each head (all of them unless partial)."""
    dim = cos.shape[-1]
    if dim == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, rest = x[..., :dim], x[..., dim:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: all in float32, scaled by (1 + w), then to the weight's dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * (1.0 + weight.float())).to(weight.dtype)


class _FamilyTransformer(Transformer):
    """Attention shared by the families here: projections, optional qk-norm, (partial) rope,
    scaled and optionally soft-capped attention, output projection (left in compute dtype)."""
    scale: float
    attn_cap: float | None = None

    def _qkv(self, x: torch.Tensor, w: dict) -> tuple[torch.Tensor, ...]:
        return tuple(linear(x, w[f"self_attn.{p}_proj.weight"], w.get(f"self_attn.{p}_proj.bias"))
                     for p in "qkv")

    def _attention(self, x, w, i, cache, cos, sin, mask) -> torch.Tensor:
        a, n = self.args, x.shape[0]
        q, k, v = self._qkv(x, w)
        q, k = q.view(n, a.num_heads, a.head_dim), k.view(n, a.num_kv_heads, a.head_dim)
        v = v.view(n, a.num_kv_heads, a.head_dim)
        if a.qk_norm:
            q, k = self._norm(q, w["self_attn.q_norm.weight"]), self._norm(k, w["self_attn.k_norm.weight"])
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, T, dim]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = cache.write(i, k, v)
        out = attend(q, keys, values, mask, self.scale, self.attn_cap)
        return linear(out.transpose(0, 1).reshape(n, -1), w["self_attn.o_proj.weight"],
                      w.get("self_attn.o_proj.bias"))


class GemmaTransformer(_FamilyTransformer):
    """Gemma 2 and Gemma 3 (text)."""

    def __init__(self, args: ModelArgs, weights, dtype: torch.dtype = torch.bfloat16,
                 kernels: Policy | None = None):
        super().__init__(args, weights, dtype, kernels)
        self.local = frozenset(args.local_layers)
        self.scale = (args.query_pre_attn_scalar or args.head_dim) ** -0.5
        self.attn_cap = args.attn_logit_softcapping

    def _setup_rope(self) -> None:
        a = self.args
        self.inv_freq = rope_frequencies(a.rope_theta, a.head_dim, a.rope_scaling)
        local = a.local_rope
        self.local_inv_freq = (rope_frequencies(local["rope_theta"], a.head_dim, local)
                               if local is not None else self.inv_freq)

    def _embed(self, tokens: torch.Tensor, table) -> torch.Tensor:
        # transformers scales by sqrt(hidden) rounded to the table's dtype (bf16: 55.4256 -> 55.5).
        dtype = table.dtype if isinstance(table, torch.Tensor) else self.dtype
        scale = torch.tensor(self.args.hidden_size ** 0.5, dtype=dtype).float()
        return embed(tokens, table) * scale

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return gemma_rms_norm(x, weight, self.args.rms_norm_eps)

    def _cap_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return soft_cap(logits, self.args.final_logit_softcapping)

    def _rope(self, positions: torch.Tensor) -> dict:
        tables = {GLOBAL: rope_tables(positions, self.inv_freq, self.dtype)}
        same = self.local_inv_freq is self.inv_freq
        tables[LOCAL] = tables[GLOBAL] if same else rope_tables(positions, self.local_inv_freq, self.dtype)
        return tables

    def _mask(self, cache, n: int, mask: torch.Tensor | None) -> dict:
        return {GLOBAL: visibility_mask(cache, n, mask, None),
                LOCAL: visibility_mask(cache, n, mask, self.args.local_window)}

    def _layer(self, h, w, i, cache, rope, mask) -> torch.Tensor:
        kind = LOCAL if i in self.local else GLOBAL
        cos, sin = rope[kind]
        out = self._attention(self._norm(h, w["input_layernorm.weight"]), w, i, cache, cos, sin, mask[kind])
        h = h + self._norm(out, w["post_attention_layernorm.weight"]).float()
        x = self._norm(h, w["pre_feedforward_layernorm.weight"])
        gate = linear(x, w["mlp.gate_proj.weight"], w.get("mlp.gate_proj.bias"))
        up = linear(x, w["mlp.up_proj.weight"], w.get("mlp.up_proj.bias"))
        out = linear(F.gelu(gate, approximate="tanh") * up, w["mlp.down_proj.weight"],
                     w.get("mlp.down_proj.bias"))
        return h + self._norm(out, w["post_feedforward_layernorm.weight"]).float()


class Phi3Transformer(_FamilyTransformer):
    """Phi-3 and Phi-4 (model_type phi3)."""

    def __init__(self, args: ModelArgs, weights, dtype: torch.dtype = torch.bfloat16,
                 kernels: Policy | None = None):
        super().__init__(args, weights, dtype, kernels)
        self.scale = args.head_dim ** -0.5
        a = args
        q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        self.qkv_sizes = [q, kv, kv]

    def _setup_rope(self) -> None:
        a, s = self.args, self.args.rope_scaling
        dim = a.rotary_dim or a.head_dim
        base = rope_frequencies(a.rope_theta, dim)
        if s is None:
            self.inv_freq, self.long_inv_freq, self.rope_scale = base, None, 1.0
            return
        # LongRoPE divides each frequency by its factor (transformers: 1 / (factor * base^(2i/d))).
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        powers = a.rope_theta ** exponents
        self.inv_freq = 1.0 / (torch.tensor(s["short_factor"], dtype=torch.float32) * powers)
        self.long_inv_freq = 1.0 / (torch.tensor(s["long_factor"], dtype=torch.float32) * powers)
        self.rope_scale = s["attention_factor"]

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv = self.inv_freq
        if self.long_inv_freq is not None:  # per token: long factors from the original length on
            long = positions[:, None] >= self.args.rope_scaling["original_max_position_embeddings"]
            inv = torch.where(long, self.long_inv_freq[None, :], self.inv_freq[None, :])
        return rope_tables(positions, inv, self.dtype, self.rope_scale)

    def _qkv(self, x: torch.Tensor, w: dict) -> tuple[torch.Tensor, ...]:
        return linear(x, w["self_attn.qkv_proj.weight"]).split(self.qkv_sizes, dim=-1)

    def _layer(self, h, w, i, cache, rope, mask) -> torch.Tensor:
        cos, sin = rope
        x = self._norm(h, w["input_layernorm.weight"])
        h = h + self._attention(x, w, i, cache, cos, sin, mask).float()
        x = self._norm(h, w["post_attention_layernorm.weight"])
        gate, up = linear(x, w["mlp.gate_up_proj.weight"]).chunk(2, dim=-1)
        return h + linear(F.silu(gate) * up, w["mlp.down_proj.weight"]).float()
