"""Logits -> probabilities (temperature, top-k, top-p) and sampling. Pure functions.
The repetition penalty, which needs each position's history, is applied before these
(specdec/penalty.py); its settings travel in SamplingParams with the others
(specdec/sampling_params.py).

Temperature 0 is greedy: the distribution is one-hot on the argmax, so the same
verification code is exact for greedy and sampled decoding.
"""
from __future__ import annotations

import torch

from .sampling_params import SamplingParams

__all__ = ["SamplingParams", "probs_from_logits", "sample"]


def probs_from_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """float32 probabilities over the last dim after temperature, top-k, top-p."""
    logits = logits.float()
    if params.greedy:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        probs = _top_p(probs, params.top_p)
    return probs


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    # Keep the smallest set of most likely tokens whose mass reaches top_p: a token
    # stays if the mass strictly before it (in descending order) is below top_p.
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `probs` ([V] -> scalar tensor, [N, V] -> [N])."""
    if probs.dim() == 1:
        return torch.multinomial(probs, 1, generator=generator)[0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
