"""Prompt-lookup branches in a draft model's tree: the context's own n-gram continuations
(specdec/lookup.py) grafted onto the tree the draft grew (speculate/tree.py), so a reply that
quotes, rewrites or edits its prompt gets runs the draft alone would not guess, at the cost
of a dictionary lookup and a few more tokens in the target's pass.

A grafted node is verified like any other node (tree attention, verify.accept_tree), so the
output stays exact. Where the lookup proposes a token the draft already proposed, the node
is shared and only what differs is added. Grafted nodes carry rank LOOKUP_RANK: the tree's
per-rank hit rates count the draft's proposals only, and the lookup's hit rate is measured
on its own, per match length (LookupPolicy.acceptance), from the target's walks.

How many nodes to graft: up to `max_nodes` in the trie's best order (most agreeing
occurrences first), the count with the best expected tokens per second for this pass (the
tree's cost model prices the wider pass; a node's worth is its share of the occurrences
times the measured acceptance per token of its depth). With `fixed`, every node up to
`max_nodes` is grafted (a fixed tree size stays deterministic). When grafting nothing wins
at a match length, one node is offered in every `recheck_every` such passes to measure again
(speculate/backoff.py).

The draft never forwards grafted nodes: the tree strategy keeps the forwarded prefix of the
accepted path in the draft's cache, and the draft catches up on the rest next pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..lookup import Candidates, NgramIndex, best_nodes
from .backoff import BackoffPerKey
from .lookup_policy import LookupPolicy
from .tree_model import DraftTree

LOOKUP_RANK = -1  # DraftTree.ranks of a node only the lookup proposed


@dataclass
class Graft:
    """What a pass's lookup offered: the match length, and the tree nodes on the lookup's
    branches (shared with the draft or added), each after its parent."""
    order: int = 0
    nodes: list[int] = field(default_factory=list)
    added: int = 0  # of those, nodes the draft had not proposed

    def taken(self, tree: DraftTree, path: list[int]) -> tuple[int, bool]:
        """(lookup tokens the walk took in a row from the root, whether it then refused one
        the lookup offered)."""
        mine = set(self.nodes)
        taken = 0
        while taken < len(path) and path[taken] in mine:
            taken += 1
        last = path[taken - 1] if taken else -1
        return taken, any(child in mine for child in tree.children(last))


class LookupBranches:
    def __init__(self, max_nodes: int = 8, fixed: bool = False, index: NgramIndex | None = None,
                 decay: float = 0.9, recheck_every: int = 8):
        if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 0:
            raise ValueError(f"lookup branch nodes must be an integer >= 0, got {max_nodes!r}")
        self.max_nodes = max_nodes
        self.fixed = fixed
        self.index = index or NgramIndex()
        self.policy = LookupPolicy(k_max=max(max_nodes, 1), decay=decay)  # its hit rates only
        self.backoff = BackoffPerKey(recheck_every)  # per match length

    def graft(self, tree: DraftTree, context: list[int], room: int, rate) -> Graft:
        """Add lookup branches to `tree` (at most `room` nodes in all). `rate(new_nodes,
        extra_tokens)`: the expected tokens per second of the pass with `new_nodes` more nodes
        verified and `extra_tokens` more expected to be accepted."""
        space = min(self.max_nodes, room - len(tree))
        if space <= 0:
            return Graft()
        found = self.index.propose(context, space)
        if not len(found):
            return Graft()
        ranked = best_nodes(found, self.max_nodes)
        new, gain = _worth(tree, found, ranked, self.policy.acceptance(found.order))
        fits = sum(1 for n in new if n <= space)  # prefixes whose added nodes fit
        count = fits if self.fixed else self._count(found.order, new[:fits], gain[:fits], rate)
        return _apply(tree, found, ranked[:count])

    def observe(self, graft: Graft, tree: DraftTree, path: list[int]) -> None:
        if graft.nodes:
            taken, refused = graft.taken(tree, path)
            self.policy.observe_walk(graft.order, taken, refused)

    def _count(self, order: int, new: list[int], gain: list[float], rate) -> int:
        """How many of the ranked trie nodes to graft: the prefix with the best rate."""
        best, best_rate = 0, rate(0, 0.0)
        for count in range(1, len(new) + 1):
            r = rate(new[count - 1], gain[count - 1])
            if r > best_rate:
                best, best_rate = count, r
        if not new:
            return 0
        if not self.backoff.draft(order, best > 0):
            return 0
        return max(best, 1)  # 1: grafting nothing wins, but this pass measures again

    def describe(self) -> str:
        size = f"{self.max_nodes}" if self.fixed else f"<= {self.max_nodes} (cost model)"
        return f"lookup branches {size}"


def _worth(tree: DraftTree, found: Candidates, ranked: list[int], acceptance: float
           ) -> tuple[list[int], list[float]]:
    """For each prefix of `ranked` (trie nodes): how many nodes grafting it adds to `tree`,
    and the expected accepted tokens it adds (a node the draft also proposed adds none)."""
    where: dict[int, int | None] = {-1: -1}  # trie node -> tree node (None: would be new)
    depth: dict[int, int] = {-1: 0}
    new, gain, added, expected = [], [], 0, 0.0
    for node in ranked:
        parent = found.parents[node]
        depth[node] = depth[parent] + 1
        at = where[parent]
        where[node] = tree.child(at, found.tokens[node]) if at is not None else None
        if where[node] is None:
            added += 1
            expected += found.counts[node] / found.matches * acceptance ** depth[node]
        new.append(added)
        gain.append(expected)
    return new, gain


def _apply(tree: DraftTree, found: Candidates, nodes: list[int]) -> Graft:
    graft = Graft(order=found.order)
    where = {-1: -1}
    for node in nodes:
        parent, token = where[found.parents[node]], found.tokens[node]
        existing = tree.child(parent, token)
        if existing is None:
            share = found.counts[node] / found.matches
            cum = (tree.cum_logp[parent] if parent >= 0 else 0.0) + math.log(share)
            existing = tree.add(token, parent=parent, rank=LOOKUP_RANK, cum_logp=cum)
            graft.added += 1
        where[node] = existing
        graft.nodes.append(existing)
    return graft
