"""The overlapped strategy's draft tree: one tree that outlives the pass. Pure: imports no
model. The strategy (speculate/overlap.py) forwards its nodes through the draft, sends its
best nodes to the target and re-roots it after each pass.

Every node the draft proposed is in the tree; a node is *forwarded* once the draft has run
on it, which gives it a slot in the draft's KV cache (slots counted past the context's
entries, in forward order) and its own proposals as children. Nodes not forwarded yet form
the frontier. A node's score is the estimated log-probability that the target's walk
reaches it (tree_model.py's hit model: a child scores its parent's score plus the log hit
rate measured for proposals of its rank, draft probability and depth), so a child never
scores above its parent: the n best nodes, ties broken by number, always form a tree,
parents first.
"""
from __future__ import annotations

import heapq
from typing import Callable

import torch

from .tree_model import DraftTree


class GrowingTree:
    def __init__(self):
        self.tokens: list[int] = []
        self.parents: list[int] = []   # -1: the root (the last context token)
        self.depths: list[int] = []    # 1 for the root's children
        self.ranks: list[int] = []     # rank among its parent's proposals (0 = favourite)
        self.scores: list[float] = []  # estimated log reach probability
        self.confidences: list[float | None] = []  # the draft's probability of the token
        self.slots: list[int] = []     # draft cache slot past the context; -1 = not forwarded
        self.forwarded = 0             # nodes with a slot: slots 0..forwarded-1, each used once
        self._children: dict[int, dict[int, int]] = {}
        self._frontier: list[tuple[float, int]] = []  # heap of (-score, node), not forwarded

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, *, parent: int, rank: int, score: float,
            confidence: float | None = None) -> int:
        """Node number of a new child of `parent` (-1: the root), not forwarded yet;
        `confidence`: the draft's probability of `token` (None: not known)."""
        i = len(self.tokens)
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
        self.ranks.append(rank)
        self.scores.append(score)
        self.confidences.append(confidence)
        self.slots.append(-1)
        self._children.setdefault(parent, {})[token] = i
        heapq.heappush(self._frontier, (-score, i))
        return i

    def child(self, node: int, token: int) -> int | None:
        return self._children.get(node, {}).get(token)

    def is_forwarded(self, node: int) -> bool:
        return self.slots[node] >= 0

    # -- growing ----------------------------------------------------------------------------
    def best_frontier_score(self) -> float | None:
        return -self._frontier[0][0] if self._frontier else None

    def frontier_scores(self, k: int) -> list[float]:
        """The scores of the k best nodes not forwarded yet (without taking them)."""
        return [-s for s, _ in heapq.nsmallest(k, self._frontier)]

    def take_frontier(self, k: int) -> list[int]:
        """Remove and return the k best nodes not forwarded yet. None is another's
        ancestor (a node's children exist only once it is forwarded), so they can be
        forwarded together."""
        return [heapq.heappop(self._frontier)[1] for _ in range(min(k, len(self._frontier)))]

    def requeue(self, nodes: list[int]) -> None:
        """Put nodes taken from the frontier back (their forward was dropped unfinished)."""
        for node in nodes:
            heapq.heappush(self._frontier, (-self.scores[node], node))

    def mark_forwarded(self, nodes: list[int]) -> None:
        """`nodes` now hold the next draft cache slots, in this order."""
        for j, node in enumerate(nodes):
            self.slots[node] = self.forwarded + j
        self.forwarded += len(nodes)

    def ancestor_slots(self, node: int) -> list[int]:
        """Cache slots of the node's ancestors (all forwarded: a node is proposed by its
        forwarded parent)."""
        out = []
        p = self.parents[node]
        while p >= 0:
            out.append(self.slots[p])
            p = self.parents[p]
        return out

    def batch_mask(self, nodes: list[int], context: int) -> torch.Tensor:
        """Draft attention for forwarding `nodes` after `context` context entries and the
        forwarded nodes: [len(nodes), context + forwarded + len(nodes)] bool, each node
        seeing the whole context, its ancestors and itself."""
        n = len(nodes)
        mask = torch.zeros(n, context + self.forwarded + n, dtype=torch.bool)
        mask[:, :context] = True
        for j, node in enumerate(nodes):
            for s in self.ancestor_slots(node):
                mask[j, context + s] = True
            mask[j, context + self.forwarded + j] = True
        return mask

    # -- sending ----------------------------------------------------------------------------
    def best(self, n: int) -> list[int]:
        """The n best nodes by score, parents before children (ties go to the older node,
        and a parent is older than its children)."""
        return heapq.nsmallest(n, range(len(self.tokens)), key=lambda i: (-self.scores[i], i))

    def draft_tree(self, nodes: list[int]) -> DraftTree:
        """`nodes` (parents first, closed under parents) as a DraftTree numbered in that order,
        the form verify.accept_tree and the cost model's walk statistics take."""
        index = {node: i for i, node in enumerate(nodes)}
        tree = DraftTree()
        for node in nodes:
            parent = self.parents[node]
            tree.add(self.tokens[node], parent=index[parent] if parent >= 0 else -1,
                     rank=self.ranks[node], cum_logp=self.scores[node],
                     confidence=self.confidences[node])
        return tree

    # -- after a pass -----------------------------------------------------------------------
    def subtree(self, root: int, hit_logp: Callable[[int, int, float | None], float]
                ) -> tuple["GrowingTree", list[int]]:
        """The tree below node `root` (which becomes the new root), rescored with the current
        `hit_logp(rank, depth below the new root, confidence)`, and the old slots of its forwarded nodes in the order the new tree numbers
        their slots (ascending: move them to follow the context in that order)."""
        new = GrowingTree()
        index = {root: -1}
        kept: list[int] = []
        # Node numbers grow from parent to child, so one pass in number order suffices.
        for node in range(root + 1, len(self.tokens)):
            parent = index.get(self.parents[node])
            if parent is None:
                continue
            depth = 1 if parent < 0 else new.depths[parent] + 1
            rank, confidence = self.ranks[node], self.confidences[node]
            score = (new.scores[parent] if parent >= 0 else 0.0) + hit_logp(rank, depth, confidence)
            index[node] = new.add(self.tokens[node], parent=parent, rank=rank, score=score,
                                  confidence=confidence)
            if self.slots[node] >= 0:
                kept.append(node)
        kept.sort(key=lambda node: self.slots[node])
        forwarded = [index[node] for node in kept]
        done = set(forwarded)
        new._frontier = [(s, i) for s, i in new._frontier if i not in done]
        heapq.heapify(new._frontier)
        new.mark_forwarded(forwarded)
        return new, [self.slots[node] for node in kept]
