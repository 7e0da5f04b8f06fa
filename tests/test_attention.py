"""The cache-reading attention (specdec/compute/attention.py) against the path it replaced:
scaled_dot_product_attention on 3-D tensors (torch's math path: the cache converted to
float32 and repeated per query head) and, for soft-capped scores, the explicit form with
repeated K/V. Every mask the runtime passes: none (one token), causal prefill, several new
tokens after a cache, a draft tree, a sliding window; GQA groups of 1, 3 and 4; caches longer
than the fused kernel's 512-key blocks, so whole blocks are masked for some rows.

float32: equal to the old path within 1e-6 relative + 4e-6 absolute (outputs of order 1; the
two sum the keys in different orders, ~1e-6 apart at 1,100 keys).
bf16: both paths within 1% of the output's largest magnitude of a float32 reference computed
from the same bf16 inputs (bf16 has 8 significant bits: one rounding of the output alone is up
to 0.4% of an element; the new path also rounds the probabilities to bf16 before multiplying
by V, as transformers' SDPA does on CPU); a wrong grouping or a dropped mask misses that bound.
Soft-capped scores (Gemma 2) are computed in the compute dtype, as transformers' eager Gemma 2
and the old path did: their bf16 bound is 2% (a score near the cap of 5 rounds by up to 1/64).
"""
import pytest
import torch
import torch.nn.functional as F

from specdec.cache import KVCache
from specdec.compute import attention
from specdec.model import visibility_mask
from specdec.speculate.tree_model import DraftTree

GROUPS = [(4, 4), (9, 3), (8, 2)]  # (query heads, KV heads): groups of 1, 3 and 4
DIM = 64
F32_RTOL, F32_ATOL = 1e-6, 4e-6
BF16_TOL = 1e-2  # of the reference's largest magnitude
BF16_CAPPED_TOL = 2e-2  # capped scores are rounded to bf16 before the cap (transformers' eager Gemma 2)


def old_attention(q, keys, values, mask, scale=None, cap=None):
    """The replaced path (model.Transformer._attention, families.attend before)."""
    group = q.shape[0] // keys.shape[0]
    if cap is None:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale,
                                              enable_gqa=group > 1)
    keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
    scores = attention.soft_cap(q @ keys.transpose(1, 2) * scale, cap)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ values


def inputs(heads, kv_heads, n, length, dtype, seed):
    """q [heads, n, dim] and keys/values as the cache hands them: views of a longer buffer."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(heads, n, DIM, generator=g) * 2).to(dtype)  # peaked softmax rows
    buffers = [torch.randn(kv_heads, length + 37, DIM, generator=g).to(dtype) for _ in range(2)]
    return q, buffers[0][:, :length], buffers[1][:, :length]


def tree_mask(context: int, nodes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tree = DraftTree()
    for i in range(nodes):
        parent = int(torch.randint(-1, i, (), generator=g)) if i else -1
        tree.add(100 + i, parent=parent, rank=0, cum_logp=0.0)
    return tree.attention_mask(context, 0, nodes)


def window_mask(cached: int, n: int, window: int) -> torch.Tensor | None:
    cache = KVCache(1, 1, 1, cached + n)
    cache.reserve(torch.arange(cached))
    cache.commit(cached)
    cache.reserve(cache.next_positions(n))
    return visibility_mask(cache, n, None, window)


def causal(cached: int, n: int) -> torch.Tensor:
    return torch.ones(n, cached + n, dtype=torch.bool).tril(cached)


# (name, new tokens, cached entries, mask): every kind of mask the runtime passes
CASES = [
    ("one token", 1, 300, None),
    ("one token, long cache", 1, 1100, None),
    ("verify 3", 3, 300, causal(300, 3)),
    ("verify 8, long cache", 8, 1100, causal(1100, 8)),
    ("verify 12 (unfolded)", 12, 600, causal(600, 12)),
    ("prefill", 40, 0, causal(0, 40)),
    ("prefill, long", 530, 0, causal(0, 530)),
    ("tree of 7", 7, 300, tree_mask(300, 7, 1)),
    ("tree of 24, long cache", 24, 1100, tree_mask(1100, 24, 2)),
    ("window, one token", 1, 1100, window_mask(1100, 1, 64)),
    ("window, verify 5", 5, 1100, window_mask(1100, 5, 64)),
    ("window, prefill", 120, 0, window_mask(0, 120, 32)),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("heads,kv_heads", GROUPS)
@pytest.mark.parametrize("name,n,cached,mask", CASES, ids=IDS)
def test_float32_equals_the_old_path(heads, kv_heads, name, n, cached, mask):
    q, keys, values = inputs(heads, kv_heads, n, cached + n, torch.float32, seed=n + cached)
    torch.testing.assert_close(attention.attend(q, keys, values, mask),
                               old_attention(q, keys, values, mask), rtol=F32_RTOL, atol=F32_ATOL)


def bf16_error(fn, q, keys, values, mask, **kw) -> float:
    """fn's bf16 result against float32 attention of the same bf16 inputs, relative to the
    reference's largest magnitude."""
    want = old_attention(q.float(), keys.float(), values.float(), mask, **kw)
    got = fn(q, keys, values, mask, **kw).float()
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("heads,kv_heads", GROUPS)
@pytest.mark.parametrize("name,n,cached,mask", CASES, ids=IDS)
def test_bf16_within_tolerance_of_float32(heads, kv_heads, name, n, cached, mask):
    q, keys, values = inputs(heads, kv_heads, n, cached + n, torch.bfloat16, seed=n + cached)
    assert bf16_error(attention.attend, q, keys, values, mask) <= BF16_TOL
    assert bf16_error(old_attention, q, keys, values, mask) <= BF16_TOL  # the same class of error


@pytest.mark.parametrize("wrong", ["heads grouped round-robin", "mask dropped"])
def test_bf16_tolerance_catches_a_wrong_attention(wrong):
    q, keys, values = inputs(9, 3, 5, 305, torch.bfloat16, seed=3)
    mask = tree_mask(300, 5, 3)
    if wrong == "mask dropped":
        def bad(q, k, v, m):
            return attention.attend(q, k, v, None)
    else:
        def bad(q, k, v, m):  # query head h on KV head h % kv_heads instead of h // group
            order = torch.arange(9).view(3, 3).T.reshape(-1)
            return attention.attend(q[order], k, v, m)[order.argsort()]
    assert bf16_error(bad, q, keys, values, mask) > BF16_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads", GROUPS)
@pytest.mark.parametrize("name,n,cached,mask", CASES, ids=IDS)
def test_soft_capped_scores(dtype, heads, kv_heads, name, n, cached, mask):
    """Gemma 2's capped scores: the grouped form against the repeated one (the same products,
    fewer copies; bit for bit in bf16 on AVX512 Zen 4, not asserted: BLAS may block the two
    shapes differently elsewhere); bf16 within the capped tolerance of float32."""
    q, keys, values = inputs(heads, kv_heads, n, cached + n, dtype, seed=n)
    kw = dict(scale=DIM ** -0.5, cap=5.0)
    got = attention.attend(q, keys, values, mask, **kw)
    if dtype == torch.float32:
        torch.testing.assert_close(got, old_attention(q, keys, values, mask, **kw),
                                   rtol=F32_RTOL, atol=F32_ATOL)
    else:
        assert bf16_error(attention.attend, q, keys, values, mask, **kw) <= BF16_CAPPED_TOL
        assert bf16_error(old_attention, q, keys, values, mask, **kw) <= BF16_CAPPED_TOL


def test_scale_is_applied():
    q, keys, values = inputs(9, 3, 3, 60, torch.float32, seed=5)
    mask = causal(57, 3)
    for scale in (0.05, 0.3):
        torch.testing.assert_close(attention.attend(q, keys, values, mask, scale=scale),
                                   old_attention(q, keys, values, mask, scale=scale),
                                   rtol=F32_RTOL, atol=F32_ATOL)


@pytest.mark.parametrize("n", [1, attention.FOLD_MAX_TOKENS, attention.FOLD_MAX_TOKENS + 1])
def test_both_kernel_calls_agree(n):
    """Folded (few tokens) and per-head (many) compute the same attention: which one a pass
    takes changes nothing beyond float rounding."""
    q, keys, values = inputs(9, 3, n, 200 + n, torch.float32, seed=n)
    mask = causal(200, n)
    torch.testing.assert_close(attention.folded(q, keys, values, mask),
                               attention.per_head(q, keys, values, mask), rtol=F32_RTOL, atol=F32_ATOL)
