"""Acceptance of drafted tokens. Pure tensor code: imports no model.

Chain speculative sampling (Leviathan et al. 2023; Chen et al. 2023): draft token x_i,
drawn from q_i, is accepted with probability min(1, p_i(x)/q_i(x)); at the first
rejection the replacement is drawn from norm(max(p_i - q_i, 0)); if all k pass, a
bonus token is drawn from p_k. The emitted tokens are then distributed exactly as the
target's own samples. With greedy params p and q are one-hot and this reduces to
"accept while the draft equals the target's argmax", which `accept_greedy` does
without touching the random generator.
"""
from __future__ import annotations

import torch

from .sampling import sample


def accept_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """draft_tokens [k], target_logits [k+1, V] -> (accepted count n, next token)."""
    best = target_logits.argmax(-1)
    k = draft_tokens.numel()
    matches = (best[:k] == draft_tokens).long()
    n = int(matches.cumprod(0).sum()) if k else 0
    return n, int(best[n])


def accept_sampled(draft_tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[int, int]:
    """draft_tokens [k] drawn from q [k, V]; p [k+1, V] the target's -> (n, next token)."""
    k = draft_tokens.numel()
    for i in range(k):
        x = int(draft_tokens[i])
        ratio = p[i, x] / q[i, x] if q[i, x] > 0 else torch.tensor(0.0)
        u = torch.rand((), generator=generator)
        if u < ratio:
            continue
        return i, int(sample(residual(p[i], q[i]), generator))
    return k, int(sample(p[k], generator))


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(p - q, 0)); falls back to p where p <= q everywhere (then p == q up to
    rounding and a rejection has probability ~0)."""
    r = torch.clamp(p - q, min=0)
    total = r.sum()
    return r / total if total > 0 else p


def accept_tree(tree, logits: torch.Tensor, params, generator: torch.Generator | None = None
                ) -> tuple[list[int], int]:
    """Walk a draft tree with the target: logits [1 + len(tree), V], row 0 the root's, row
    i+1 node i's. At each node draw the target's own next token (argmax when greedy, a
    sample from p otherwise); if the tree has that token as a child, step into it, else
    emit it and stop. Returns (accepted node path, next token).

    Exact (SpecExec's rule for deterministic trees): every emitted token is drawn from the
    target's distribution given everything before it; the tree only decides how many of
    those draws one pass can make. The draft's probabilities never enter, which is what
    a best-first tree needs: its children are chosen, not sampled, so the i.i.d.-candidate
    assumption of multi-candidate rejection sampling (SpecInfer) would not hold.
    """
    from .sampling import probs_from_logits

    node, path = -1, []
    while True:
        row = logits[node + 1]
        if params.greedy:
            token = int(row.argmax())
        else:
            token = int(sample(probs_from_logits(row, params), generator))
        child = tree.child(node, token)
        if child is None:
            return path, token
        path.append(child)
        node = child
