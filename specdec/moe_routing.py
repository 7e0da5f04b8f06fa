"""Routing statistics of a mixture-of-experts model: how many distinct experts a pass of T
tokens needs per layer, and how much neighbouring tokens share.

Why: verifying T drafted tokens reads the union of their experts, so a speculative pass costs
more bytes as T grows. With independent routing the union is N(1 - (1 - k/N)^T) of N experts
with k routed per token; measured routing is correlated between neighbouring tokens, so the real
union is smaller. `RoutingTrace` records the experts each token was routed to in each layer
while the model runs (a `MoeTransformer`'s routing observer); `routing_statistics` turns a
trace into those numbers, beside the independent-routing figure.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def independent_union(experts: int, routed: int, tokens: int) -> float:
    """Expected distinct experts per layer for `tokens` tokens routed independently."""
    return experts * (1 - (1 - routed / experts) ** tokens)


@dataclass
class RoutingTrace:
    """Per layer, the expert ids of every token seen, in order ([tokens, k] tensors appended)."""
    layers: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def __call__(self, layer: int, ids: torch.Tensor) -> None:
        self.layers.setdefault(layer, []).append(ids.detach().clone())

    def tokens(self, layer: int) -> torch.Tensor:
        return torch.cat(self.layers[layer]) if self.layers.get(layer) else torch.empty(0, 0, dtype=torch.long)


def routing_statistics(trace: RoutingTrace, experts: int, pass_sizes=(1, 2, 4, 8)) -> dict:
    """{"distinct_per_pass": {T: mean union per layer over windows of T consecutive tokens},
    "independent": {T: the same if routing were independent}, "neighbour_reuse": the mean share
    of a token's experts its predecessor also used (per layer), "tokens": tokens seen}."""
    per_layer = [trace.tokens(layer) for layer in sorted(trace.layers)]
    per_layer = [ids for ids in per_layer if len(ids)]
    if not per_layer:
        raise ValueError("the trace is empty: run the model with the trace as its routing observer first")
    routed, n = per_layer[0].shape[1], per_layer[0].shape[0]
    unions = {t: _mean_union(per_layer, t) for t in pass_sizes if t <= n}
    reuse = [_neighbour_reuse(ids) for ids in per_layer if len(ids) > 1]
    return {"tokens": n, "routed": routed, "experts": experts, "distinct_per_pass": unions,
            "independent": {t: independent_union(experts, routed, t) for t in unions},
            "neighbour_reuse": sum(reuse) / len(reuse) if reuse else None}


def _mean_union(per_layer: list[torch.Tensor], t: int) -> float:
    sizes = [len(set(ids[s:s + t].flatten().tolist())) for ids in per_layer for s in range(len(ids) - t + 1)]
    return sum(sizes) / len(sizes)


def _neighbour_reuse(ids: torch.Tensor) -> float:
    shared = [len(set(ids[i].tolist()) & set(ids[i - 1].tolist())) for i in range(1, len(ids))]
    return sum(shared) / (len(shared) * ids.shape[1])
