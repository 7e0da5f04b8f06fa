"""Prompt lookup: continuations of the context's own n-grams, proposed as drafts.

A reply that rewrites, summarises, quotes or edits its prompt repeats long runs of it. When
the last n tokens of the context (prompt and reply so far) occurred earlier, the tokens that
followed them then are a good guess for what follows now (llama.cpp's lookup decoding,
transformers' `prompt_lookup_num_tokens`). No model runs: the guesses cost a dictionary
lookup, and the target checks them like any draft (speculate/lookup.py).

This module only finds the guesses: `NgramIndex` keeps, for every n-gram of the context up
to `max_order` tokens, where it ended; `propose` takes the longest suffix of the context
that occurred before, and merges what followed its occurrences into a trie whose node counts
say how many occurrences agree on that prefix. Pure Python: imports no model and no torch.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass
class Candidates:
    """Continuations of the context's suffix, as a trie in insertion order (a parent before
    its children). `order`: the matched suffix's length in tokens (0: no match, no nodes).
    `counts[i]`: how many of the `matches` occurrences continue with node i's path."""
    order: int = 0
    matches: int = 0
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # -1: follows the context directly
    counts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def path(self, node: int) -> list[int]:
        """The tokens from the first continuation token down to `node`."""
        out = []
        while node >= 0:
            out.append(self.tokens[node])
            node = self.parents[node]
        return out[::-1]


class NgramIndex:
    """Where each n-gram (1 <= n <= max_order) of a token list ends, kept up to date as the
    list grows; a list that changes other than by growing is re-indexed (a new conversation).

    max_order: the longest suffix looked up (longer matches are likelier to continue alike).
    min_order: the shortest suffix that counts as a match (1: any repeated token).
    max_occurrences: only the most recent occurrences of a suffix are merged (bounds the work
    on a frequent token, and recent text predicts better)."""

    def __init__(self, max_order: int = 4, min_order: int = 1, max_occurrences: int = 16):
        for name, value in (("max_order", max_order), ("min_order", min_order),
                            ("max_occurrences", max_occurrences)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"lookup {name} must be an integer >= 1, got {value!r}")
        if min_order > max_order:
            raise ValueError(f"lookup min_order ({min_order}) must not exceed max_order ({max_order})")
        self.max_order = max_order
        self.min_order = min_order
        self.max_occurrences = max_occurrences
        self.tokens: list[int] = []
        self._ends: dict[tuple[int, ...], list[int]] = {}  # n-gram -> end positions, ascending

    def sync(self, context: list[int]) -> None:
        """Index `context`: only its new tail when it extends what is indexed."""
        n = len(self.tokens)
        if len(context) < n or context[:n] != self.tokens:
            self.tokens, self._ends = [], {}
            n = 0
        self.tokens.extend(context[n:])
        for end in range(n + 1, len(self.tokens) + 1):
            for order in range(1, min(self.max_order, end) + 1):
                self._ends.setdefault(tuple(self.tokens[end - order:end]), []).append(end)

    def propose(self, context: list[int], length: int) -> Candidates:
        """Up to `length` tokens of continuation after the longest suffix of `context` (at
        most max_order tokens, at least min_order) that occurred before in it."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"lookup length must be an integer >= 0, got {length!r}")
        self.sync(context)
        if length == 0:
            return Candidates()
        total = len(self.tokens)
        for order in range(min(self.max_order, total - 1), self.min_order - 1, -1):
            ends = [e for e in self._ends.get(tuple(self.tokens[total - order:]), ()) if e < total]
            if ends:
                recent = ends[-self.max_occurrences:]
                return _trie(order, [self.tokens[e:e + length] for e in reversed(recent)])
        return Candidates()


def _trie(order: int, continuations: list[list[int]]) -> Candidates:
    """Merge continuations (most recent first) into a trie with counts."""
    out = Candidates(order=order, matches=len(continuations))
    children: dict[tuple[int, int], int] = {}  # (parent, token) -> node
    for seq in continuations:
        parent = -1
        for token in seq:
            node = children.get((parent, token))
            if node is None:
                node = len(out.tokens)
                children[(parent, token)] = node
                out.tokens.append(token)
                out.parents.append(parent)
                out.counts.append(0)
            out.counts[node] += 1
            parent = node
    return out


def best_nodes(candidates: Candidates, budget: int) -> list[int]:
    """The `budget` nodes most occurrences agree on, best first, every node after its parent
    (a node's count never exceeds its parent's). Ties go to the earlier node: the more
    recent occurrence, or the shallower node."""
    if budget <= 0:
        return []
    kids: dict[int, list[int]] = {}
    for node, parent in enumerate(candidates.parents):
        kids.setdefault(parent, []).append(node)
    heap = [(-candidates.counts[n], n) for n in kids.get(-1, [])]
    heapq.heapify(heap)
    picked = []
    while heap and len(picked) < budget:
        _, node = heapq.heappop(heap)
        picked.append(node)
        for child in kids.get(node, []):
            heapq.heappush(heap, (-candidates.counts[child], child))
    return picked
