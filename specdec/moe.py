"""The routed MLP of a mixture-of-experts layer: router, the experts it picks, weighted sum.

Follows transformers' Qwen3-MoE / Qwen2-MoE / Mixtral / OLMoE sparse blocks step by step: the
router's logits in the compute dtype, a float32 softmax over all experts, the top k per token,
renormalised to sum to one when the family says so (norm_topk_prob), each expert's SwiGLU MLP
run on the tokens routed to it and added in, weighted. Qwen2-MoE adds a shared expert behind
a sigmoid gate. The sum is kept in float32 (the residual stream's dtype; see model.py).

Experts come from the layer's weights: by name when the whole layer is in RAM, else from the
layer's expert source (offload/expert_names.EXPERT_SOURCE), which reads only the experts asked
for, in batches that fit its buffers, each expert handed over when its read has ended (the
reads run while the shared expert and the earlier experts compute). Experts are visited in ascending id whatever the source,
so a streamed layer sums in the same order as the same layer in RAM (exact in float32).

Once the layer's reads are submitted, `read_ahead` may hand the source a guess of the next
layer's experts (offload/expert_guess.NextRouter): the next layer's router applied to this
layer's residual after attention, normed as the next layer will norm its own. Only which bytes
are read when depends on it.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

from offload.expert_names import (EXPERT_PARTS, EXPERT_SOURCE, ROUTER, SHARED_GATE, SHARED_PARTS,
                                  expert_tensor_name)

from .model import linear, rms_norm


def route(x: torch.Tensor, router, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(routing weights [T, k] float32, expert ids [T, k]) for tokens x [T, hidden]."""
    probs = torch.softmax(linear(x, router), dim=-1, dtype=torch.float32)
    top, ids = torch.topk(probs, top_k, dim=-1)
    if normalize:
        top = top / top.sum(dim=-1, keepdim=True)
    return top, ids


def expert_batches(w: dict, ids: list[int], last: list[int]) -> Iterable[Iterable[tuple[int, dict]]]:
    """The experts `ids` (ascending) of layer weights `w`, as batches of (expert, {part: weight}).
    A streamed layer's source starts reading the first batch before this returns; `last`: the
    experts the pass's last token routed to (the source's guess for the next pass)."""
    source = w.get(EXPERT_SOURCE)
    if source is not None:
        return source.batches(ids, last)
    return [[(e, {p: w[expert_tensor_name(e, p)] for p in EXPERT_PARTS}) for e in ids]]


def swiglu(x: torch.Tensor, gate, up, down) -> torch.Tensor:
    return linear(F.silu(linear(x, gate)) * linear(x, up), down)


# Of a token's top k under the next layer's router, the share guessed: the guess's later ranks
# are right less often (on the synthetic MoE workload, by rank pair: 87%, 73%, 60%, 44%), and a
# wrong guess costs a read and evicts a cached expert.
GUESSED_SHARE = 0.5


def read_ahead(w: dict, residual: torch.Tensor, top_k: int, eps: float) -> None:
    """If layer weights `w` stream their experts from a source that wants it, hand it the next
    layer's experts as that layer's router would pick them from `residual` [T, hidden] (this
    layer's residual stream after attention): per token the first GUESSED_SHARE of its top k,
    the union over the tokens, the experts with the most routing weight first."""
    source = w.get(EXPERT_SOURCE)
    following = source.next_router() if source is not None else None
    if following is None:
        return
    norm, router = following
    guessed = max(1, math.ceil(top_k * GUESSED_SHARE))
    weights, ids = route(rms_norm(residual, norm, eps), router, guessed, normalize=False)
    mass = torch.zeros(router.shape[0], dtype=torch.float32).index_add_(0, ids.flatten(), weights.flatten())
    ranked = torch.argsort(mass, descending=True, stable=True)[:int((mass > 0).sum())]
    source.read_ahead(ranked.tolist())


def routed_mlp(x: torch.Tensor, w: dict, top_k: int, normalize: bool, observe=None,
               ahead=None) -> torch.Tensor:
    """The sparse block's output [T, hidden] in float32 for normed hidden states x [T, hidden].
    `observe(ids)`, if given, sees the expert ids [T, k] chosen (routing statistics); `ahead()`,
    if given, runs once this layer's reads are submitted (a guess of the next layer's experts)."""
    weights, ids = route(x, w[ROUTER], top_k, normalize)
    if observe is not None:
        observe(ids)
    batches = expert_batches(w, torch.unique(ids).tolist(), ids[-1].tolist())
    if ahead is not None:
        ahead()
    # The shared expert computes while the routed experts are read; it is added last, as in RAM.
    shared = None
    if SHARED_GATE in w:
        shared = (torch.sigmoid(linear(x, w[SHARED_GATE])) * swiglu(x, *(w[p] for p in SHARED_PARTS))).float()
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32)
    hit = ids.T  # [k, T]: tokens grouped by routing slot, as transformers' expert mask orders them
    for batch in batches:
        for e, parts in batch:
            slot, token = torch.where(hit == e)
            y = swiglu(x[token], *(parts[p] for p in EXPERT_PARTS)).float()
            out.index_add_(0, token, y * weights[token, slot, None])
    if shared is not None:
        out += shared
    return out
