"""Repetition penalty (Keskar et al. 2019, CTRL; transformers' RepetitionPenaltyLogitsProcessor,
llama.cpp's repeat_penalty): before temperature, top-k and top-p, every token that occurs
among the tokens before a position has its logit divided by the penalty when positive and
multiplied by it otherwise. `window` limits "before" to the last N tokens, as llama.cpp's
repeat_last_n does (0: the whole context, as transformers does). Pure tensor code.

Why rows and histories. The processed distribution at a position depends on the tokens
before it, so speculation stays exact only if the target's logits for every drafted position
are processed with that position's own history: the context plus the drafts before it
(chain) or plus the node's ancestors (tree). The draft's logits get the same processing so
that it proposes what the processed target will take; exactness needs only the target's side
(the draft's distribution q enters rejection sampling as it was sampled from), but acceptance
would fall without it.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .sampling import SamplingParams


def penalize(logits: torch.Tensor, params: SamplingParams, context: Sequence[int],
             extras: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """Logits [V] or [N, V] after the repetition penalty. Row i's history is `context`
    followed by `extras[i]` (None: every row's history is `context`). Returned unchanged
    (the same tensor) when the penalty is off."""
    penalty = params.repetition_penalty
    if penalty == 1.0:
        return logits
    rows = logits.unsqueeze(0) if logits.dim() == 1 else logits
    extras = extras if extras is not None else [()] * rows.shape[0]
    if len(extras) != rows.shape[0]:
        raise ValueError(f"{len(extras)} histories for {rows.shape[0]} rows of logits")
    seen = _seen(rows.shape[-1], context, extras, params.repetition_window)
    rows = rows.float()
    scaled = torch.where(rows < 0, rows * penalty, rows / penalty)
    out = torch.where(seen, scaled, rows)
    return out[0] if logits.dim() == 1 else out


def _seen(vocab: int, context: Sequence[int], extras: Sequence[Sequence[int]], window: int) -> torch.Tensor:
    """[N, vocab] bool: the tokens in each row's history (its last `window`, 0 = all)."""
    seen = torch.zeros(len(extras), vocab, dtype=torch.bool)
    if window:
        tail = list(context[-window:])
        for i, extra in enumerate(extras):
            seen[i, _ids((tail + list(extra))[-window:])] = True
        return seen
    seen[:] = _mask(vocab, context)  # the context's part is shared: build it once
    for i, extra in enumerate(extras):
        seen[i, _ids(extra)] = True
    return seen


def _mask(vocab: int, tokens: Sequence[int]) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[_ids(tokens)] = True
    return mask


def _ids(tokens: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(list(tokens), dtype=torch.long)
