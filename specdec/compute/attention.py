"""Attention of a pass's queries over the K/V cache, without converting or copying the cache.

`attend(q, keys, values, mask)`: q [heads, T, dim]; keys, values [kv heads, L, dim], views of
the cache (specdec/cache.py), in the compute dtype; mask bool [T, L] (True = may attend) or
None (every key visible). Query head h reads KV head h // group, as transformers' repeat_kv.

Why not `F.scaled_dot_product_attention(q, keys, values, enable_gqa=...)` on 3-D tensors, as
before: on CPU a 3-D input takes torch's math path, which converts the layer's whole K and V to
float32 and repeats them per query head on every pass, a cost that grows with the context (at
1,000 cached tokens ~40% of the demo target's one-token pass, tools/context_cost.py). The same call on 4-D views takes torch's fused CPU kernel
(flash attention for CPU, `_scaled_dot_product_flash_attention_for_cpu`; it accepts an explicit
mask, float32 and bf16 alike): it reads the cache in place, block by block, with the scores,
softmax and sums in float32.

Two ways of calling it, picked by measurement (torch 2.13, 9 query / 3 KV heads of 64, one
thread, AVX512 (Zen 4), idle, 2026-12-06 19:31 UTC; the same ranking under AVX2 emulation):
- few tokens (decode, verification): each KV head's query heads folded into the query length,
  [1, kv heads, group*T, dim] against [1, kv heads, L, dim], the mask repeated per head of the
  group. With one query row per head (enable_gqa at T=1) the kernel is no faster in bf16 than
  the math path (0.98 ms against 0.78 ms at 1,000 cached tokens); folded, the group's rows
  share each block of keys: 0.15 ms (2,000 tokens: 0.28 ms against 1.75 ms). At 16 tokens
  the two calls cost the same.
- many tokens (prefill): the kernel's own GQA ([1, heads, T, dim] with enable_gqa); folding
  there repeats the mask per head and was no faster (1,000-token prefill, bf16: 34.8 ms
  against 35.7 ms folded; float32 31.6 against 35.6; the math path 86 and 93 ms).

Soft-capped scores (Gemma 2) need the explicit form: no fused kernel has a hook between the
product and the softmax. Its query heads are grouped the same way (no repeated K/V), its
matmuls in the compute dtype as transformers' eager Gemma 2 computes them.

Rounding: float32 results equal the math path's to ~1e-6 (a different summation order). In
bf16 the kernel rounds the probabilities to bf16 before multiplying by V, as transformers'
SDPA does on CPU; the old path kept them in float32, so bf16 results differ in the last bits
(tests/test_attention.py: float32 against the old path, bf16 against a float32 reference).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FOLD_MAX_TOKENS = 8  # fold the group into the query length up to this many tokens (measured above)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
           scale: float | None = None, cap: float | None = None) -> torch.Tensor:
    """Attention [heads, T, dim] of q over keys/values; `scale` None: dim^-1/2; `cap`: soft-cap
    of the scores (tanh(s / cap) * cap), None for none."""
    if cap is not None:
        return capped(q, keys, values, mask, scale, cap)
    if q.shape[1] <= FOLD_MAX_TOKENS:
        return folded(q, keys, values, mask, scale)
    return per_head(q, keys, values, mask, scale)


def folded(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
           scale: float | None = None) -> torch.Tensor:
    """The fused kernel with each KV head's query heads as one longer query: row g*T + t of KV
    head j is query head j*group + g at token t."""
    heads, n, dim = q.shape
    kv_heads = keys.shape[0]
    group = heads // kv_heads
    rows = q.reshape(1, kv_heads, group * n, dim)
    if mask is not None:
        mask = mask.repeat(group, 1)  # [group*T, L]: the mask is the same for every head
    out = F.scaled_dot_product_attention(rows, keys[None], values[None], attn_mask=mask, scale=scale)
    return out.view(heads, n, dim)


def per_head(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
             scale: float | None = None) -> torch.Tensor:
    """The fused kernel on 4-D views with its own grouped-query handling (no repeated K/V)."""
    out = F.scaled_dot_product_attention(q[None], keys[None], values[None], attn_mask=mask,
                                         scale=scale, enable_gqa=q.shape[0] != keys.shape[0])
    return out[0]


def capped(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
           scale: float | None, cap: float) -> torch.Tensor:
    """Explicit attention with soft-capped scores, query heads grouped per KV head."""
    heads, n, dim = q.shape
    kv_heads, length = keys.shape[:2]
    group = heads // kv_heads
    scale = dim ** -0.5 if scale is None else scale
    scores = soft_cap(q.reshape(kv_heads, group * n, dim) @ keys.transpose(1, 2) * scale, cap)
    if mask is not None:
        scores = scores.masked_fill(~mask.repeat(group, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return (probs @ values).view(heads, n, dim)


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap
