"""A draft tree's pass through the target, shared by every strategy that verifies a tree
(tree, overlap, lookup): how the tree is laid out after the uncached context (tree_feed),
and how the target's logits over it become the pass's tokens (verify_tree: the repetition
penalty per node, the target's walk down the tree, the target cache compacted to the
accepted path).

The walk is verify.accept_tree's: every emitted token is the target's own draw given all
tokens before it, so a strategy only decides which tree to offer, never what comes out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..penalty import penalize
from ..verify import accept_tree
from .base import Outcome, Step
from .tree_model import DraftTree, node_histories


def tree_feed(step: Step, tree: DraftTree) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, positions, mask) of a pass verifying `tree` after the uncached context: the
    context tokens see in order and never see the tree; a node sees the whole context and
    its own ancestors."""
    uncached, cache = step.uncached, step.cache
    n_ctx, n_tree = len(uncached), len(tree)
    ctx_positions = cache.next_positions(n_ctx + 1)  # the last one: the root's children
    positions = torch.cat([ctx_positions[:n_ctx], node_positions(int(ctx_positions[-1]), tree.depths)])
    mask = cache.causal_mask(n_ctx + n_tree)
    mask[n_ctx:] = tree.attention_mask(cache.length + n_ctx, 0, n_tree)
    return torch.tensor(uncached + tree.tokens, dtype=torch.long), positions, mask


def node_positions(first_child: int, depths: list[int]) -> torch.Tensor:
    """Rope positions of tree nodes: the root's children sit at `first_child`, and each
    level one further (siblings share a position)."""
    return first_child - 1 + torch.tensor(depths, dtype=torch.long)


@dataclass
class Walk:
    """The target's walk down a verified tree: the accepted nodes, root first, and the
    target's own token after them."""
    tree: DraftTree
    path: list[int]
    next_token: int

    @property
    def rejected(self) -> bool:
        """The walk ended on a node that had children: the target refused a draft."""
        return bool(self.tree.children(self.path[-1] if self.path else -1))

    def outcome(self, counters: dict[str, float] | None = None) -> Outcome:
        tree = self.tree
        return Outcome([tree.tokens[i] for i in self.path] + [self.next_token], drafted=len(tree),
                       accepted=len(self.path), rejected=self.rejected, size=len(tree) or None,
                       counters=counters or {})


def verify_tree(step: Step, tree: DraftTree, logits: torch.Tensor) -> Walk:
    """Walk `tree` with the target's logits over it (the root's row, then each node's) and
    compact the target cache: the accepted path's entries move to the consecutive slots
    after the context, the other branches are dropped."""
    logits = penalize(logits, step.params, step.context, node_histories(tree))
    path, nxt = accept_tree(tree, logits, step.params, step.generator)
    ctx_end = len(step.context)
    step.cache.keep(ctx_end, torch.tensor([ctx_end + i for i in path], dtype=torch.long))
    return Walk(tree, path, nxt)
