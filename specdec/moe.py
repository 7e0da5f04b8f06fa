"""The routed MLP of a mixture-of-experts layer: router, the experts it picks, weighted sum.

Follows transformers' Qwen3-MoE / Qwen2-MoE / Mixtral / OLMoE sparse blocks step by step: the
router's logits in the compute dtype, a float32 softmax over all experts, the top k per token,
renormalised to sum to one when the family says so (norm_topk_prob), each expert's SwiGLU MLP
run on the tokens routed to it and added in, weighted. Qwen2-MoE adds a shared expert behind
a sigmoid gate. The sum is kept in float32 (the residual stream's dtype; see model.py).

Experts come from the layer's weights: by name when the whole layer is in RAM, else from the
layer's expert source (offload/expert_names.EXPERT_SOURCE), which reads only the experts asked
for, in batches that fit its buffers. Experts are visited in ascending id whatever the source,
so a streamed layer sums in the same order as the same layer in RAM (exact in float32).
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from offload.expert_names import (EXPERT_PARTS, EXPERT_SOURCE, ROUTER, SHARED_GATE, SHARED_PARTS,
                                  expert_tensor_name)

from .model import linear


def route(x: torch.Tensor, router, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(routing weights [T, k] float32, expert ids [T, k]) for tokens x [T, hidden]."""
    probs = torch.softmax(linear(x, router), dim=-1, dtype=torch.float32)
    top, ids = torch.topk(probs, top_k, dim=-1)
    if normalize:
        top = top / top.sum(dim=-1, keepdim=True)
    return top, ids


def expert_batches(w: dict, ids: list[int]) -> Iterator[list[tuple[int, dict]]]:
    """The experts `ids` (ascending) of layer weights `w`, as lists of (expert, {part: weight})."""
    source = w.get(EXPERT_SOURCE)
    if source is not None:
        yield from source.batches(ids)
        return
    yield [(e, {p: w[expert_tensor_name(e, p)] for p in EXPERT_PARTS}) for e in ids]


def swiglu(x: torch.Tensor, gate, up, down) -> torch.Tensor:
    return linear(F.silu(linear(x, gate)) * linear(x, up), down)


def routed_mlp(x: torch.Tensor, w: dict, top_k: int, normalize: bool, observe=None) -> torch.Tensor:
    """The sparse block's output [T, hidden] in float32 for normed hidden states x [T, hidden].
    `observe(ids)`, if given, sees the expert ids [T, k] chosen (routing statistics)."""
    weights, ids = route(x, w[ROUTER], top_k, normalize)
    if observe is not None:
        observe(ids)
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32)
    hit = ids.T  # [k, T]: tokens grouped by routing slot, as transformers' expert mask orders them
    for batch in expert_batches(w, torch.unique(ids).tolist()):
        for e, parts in batch:
            slot, token = torch.where(hit == e)
            y = swiglu(x[token], *(parts[p] for p in EXPERT_PARTS)).float()
            out.index_add_(0, token, y * weights[token, slot, None])
    if SHARED_GATE in w:
        shared = swiglu(x, *(w[p] for p in SHARED_PARTS))
        out += (torch.sigmoid(linear(x, w[SHARED_GATE])) * shared).float()
    return out
