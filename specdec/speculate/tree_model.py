"""Draft trees and the cost model that sizes them. Pure tensor code: imports no model.
The tree strategy (speculate/tree.py) builds, feeds and verifies them.

A tree hangs below the root (the last context token). Node i has a token, a parent
(-1 = the root), a depth (1 for the root's children), its rank among the draft's
proposals for that parent (0 = the draft's favourite), and the estimated log-probability
that the target's walk reaches it. Nodes are numbered in insertion order and a parent is
always inserted before its children, so every prefix of the numbering is a tree.

Reach probabilities are positional, as in Sequoia: the chance that the target's token at
a node is the draft's rank-r proposal is measured as we go (per rank), and a path's
chance is the product along it. The draft's own softmax alone would do worse at
temperature 0: a draft that agrees with the target 90% of the time may give its favourite
only 30%, and a tree built on that goes wide where it should go deep. But it does rank its
proposals' chances, so the hit rates are also kept per rank, draft-probability bin and
depth (speculate/acceptance.py), each shrunk toward the coarser rate: the tree grows deep
where the draft is sure and its sure tokens are taken, and wide where it is not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .acceptance import HitRates, confidence_bin, depth_group
from .ema import Ema
from .pass_time import PassTimeFit


@dataclass
class DraftTree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    cum_logp: list[float] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    confidences: list[float | None] = field(default_factory=list)  # the draft's probability of the token
    forwarded: int = 0  # nodes [0, forwarded) are in the draft's cache, in order
    _children: dict = field(default_factory=dict)  # parent -> {token: node}

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, *, parent: int, rank: int, cum_logp: float,
            confidence: float | None = None) -> int:
        """Node number of a new child of `parent` (-1: the root); keyword-only, as
        GrowingTree.add, so rank and score never swap. `confidence`: the draft's probability
        of `token` (None: not a draft proposal, or not known)."""
        i = len(self.tokens)
        self.tokens.append(token)
        self.ranks.append(rank)
        self.confidences.append(confidence)
        self.parents.append(parent)
        self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
        self.cum_logp.append(cum_logp)
        self._children.setdefault(parent, {})[token] = i
        return i

    def child(self, node: int, token: int) -> int | None:
        return self._children.get(node, {}).get(token)

    def children(self, node: int) -> list[int]:
        return list(self._children.get(node, {}).values())

    def ancestry(self, n: int | None = None) -> torch.Tensor:
        """[n, n] bool: row i marks node i and its ancestors (the root is implicit)."""
        n = len(self) if n is None else n
        m = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            p = self.parents[i]
            if p >= 0:
                m[i] = m[p]
            m[i, i] = True
        return m

    def attention_mask(self, context: int, first: int, count: int) -> torch.Tensor:
        """Visibility for nodes [first, first+count) fed after `context` cached slots and
        nodes [0, first) already cached: the whole context, plus own ancestors."""
        anc = self.ancestry(first + count)[first:first + count]
        mask = torch.ones(count, context + first + count, dtype=torch.bool)
        mask[:, context:] = anc
        return mask

    def expected_accepted(self, n: int | None = None) -> float:
        """Expected accepted length for the first n nodes: the sum of their reach
        probabilities."""
        n = len(self) if n is None else n
        return sum(math.exp(c) for c in self.cum_logp[:n])


def path_tokens(tree, node: int) -> list[int]:
    """The tokens from the root's child down to `node` (inclusive; [] for the root, -1) of
    any tree with `tokens` and `parents` (DraftTree, GrowingTree): what follows the context
    before the position after `node`, e.g. for that position's repetition penalty."""
    path = []
    while node >= 0:
        path.append(tree.tokens[node])
        node = tree.parents[node]
    return path[::-1]


def node_histories(tree) -> list[list[int]]:
    """Per row of a tree pass's logits (the root's, then each node's): the tokens after the
    context that lead to it."""
    return [[]] + [path_tokens(tree, i) for i in range(len(tree))]


# Prior for the per-rank hit rates before anything is measured, worth PRIOR_WEIGHT visits.
PRIOR_HIT_RATES = (0.5, 0.15, 0.08, 0.05)
PRIOR_WEIGHT = 2.0


class TreeCostModel:
    """What a pass costs and how often the target takes each rank, learned as we go.

    Target pass time is fit on top of the probe's kernel curve (speculate/pass_time.py); on a
    streamed bf16 target with bf16 instructions it is flat (the read dominates), which is why
    big trees pay; on q4 weights, or bf16 without bf16 instructions, it grows with the tokens
    and the builder stops sooner.
    """

    def __init__(self, width: int, history: int = 32, profile=None):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"tree width must be a positive integer, got {width!r}")
        self.pass_time = PassTimeFit(history, profile)
        self._draft_forward = Ema()  # one batched draft forward
        # One slot per rank a node's children can have (ranks 0..width-1).
        self.hits = [0.0] * width
        self.visits = [0.0] * width
        self.detailed = HitRates(decay=0.98)  # by rank, draft-probability bin and depth

    @property
    def draft_forward_seconds(self) -> float:
        return self._draft_forward.value

    def rank_logp(self, rank: int) -> float:
        """log P(the target's token at a node is the draft's rank-`rank` proposal)."""
        return math.log(self._rank_rate(rank))

    def hit_logp(self, rank: int, depth: int, confidence: float | None) -> float:
        """log P(the target's token at a node is its rank-`rank` proposal, at `depth`, which
        the draft gives probability `confidence`): the rank's rate refined by what was
        measured for proposals of that rank, draft probability and depth."""
        if confidence is None:
            return self.rank_logp(rank)
        keys = _detail_keys(rank, depth, confidence)
        return math.log(self.detailed.rate(keys, self._rank_rate(rank)))

    def _rank_rate(self, rank: int) -> float:
        prior = PRIOR_HIT_RATES[rank] if rank < len(PRIOR_HIT_RATES) else PRIOR_HIT_RATES[-1] / (rank - 2)
        rate = (self.hits[rank] + prior * PRIOR_WEIGHT) / (self.visits[rank] + PRIOR_WEIGHT)
        return min(max(rate, 1e-4), 1.0)

    def observe_walk(self, tree: DraftTree, path: list[int], next_token: int) -> None:
        """Count, at every node the target visited, which of its children it took."""
        for step, node in enumerate([-1] + path):
            drawn = tree.tokens[path[step]] if step < len(path) else next_token
            for child in tree.children(node):
                rank = tree.ranks[child]
                if rank < 0:  # not a draft proposal (lookup branches keep their own rates)
                    continue
                hit = tree.tokens[child] == drawn
                self.visits[rank] += 1
                self.hits[rank] += hit
                if tree.confidences[child] is not None:
                    for key in _detail_keys(rank, tree.depths[child], tree.confidences[child]):
                        self.detailed.observe(key, hit)

    def observe_pass(self, tokens: int, seconds: float) -> None:
        self.pass_time.observe(tokens, seconds)

    def observe_draft(self, seconds: float) -> None:
        self._draft_forward.update(seconds)

    def pass_seconds(self, tokens: int) -> float:
        return self.pass_time.seconds(tokens)

    def rate(self, tree: DraftTree, n: int, fed_before_tree: int, draft_forwards: int) -> float:
        """Expected tokens per second for a pass verifying the first n nodes."""
        tokens = 1 + tree.expected_accepted(n)
        seconds = self.pass_seconds(fed_before_tree + n) + draft_forwards * self.draft_forward_seconds
        return tokens / max(seconds, 1e-9)


def _detail_keys(rank: int, depth: int, confidence: float) -> list[tuple]:
    b = confidence_bin(confidence)
    return [("conf", rank, b), ("conf-depth", rank, b, depth_group(depth))]
