"""Prompt-lookup speculation (draft="lookup"): no draft model; the drafts are continuations
of the context's own n-grams (specdec/lookup.py), checked by the target in one pass.

The continuations of a matched suffix form a trie (occurrences that continue differently
branch), which the target verifies as a draft tree (tree attention, speculate/tree.py's
layout) and walks with its own draws (verify.accept_tree): exact for greedy and sampled
decoding alike, since a proposal is a deterministic guess and every emitted token is drawn
from the target. (A single chain walked this way is rejection sampling with a one-hot q:
accept x with probability p(x), else draw from p without x.)

How many nodes to offer is sized per pass by LookupPolicy from two measurements: how often
the target takes a lookup token, kept per match length (a 4-token match continues alike far
more often than a 1-token one), and what a pass costs per token verified (pass_time.py, from
this CPU's kernel probe on). Proposing nothing (a plain pass) is one of the choices, so
lookup never costs more than plain decoding by more than the index upkeep.
"""
from __future__ import annotations

import math
import time

import torch

from ..lookup import Candidates, NgramIndex, best_nodes
from .base import Outcome, Plan, Step, Strategy
from .ema import Ema
from .lookup_policy import LookupPolicy
from .tree_model import DraftTree
from .tree_pass import tree_feed, verify_tree


class Lookup(Strategy):
    name = "lookup"

    def __init__(self, policy: LookupPolicy | None = None, index: NgramIndex | None = None):
        self.policy = policy or LookupPolicy()
        self.index = index or NgramIndex()
        self.lookup_seconds = Ema()

    def plan(self, step: Step) -> Plan:
        started = time.perf_counter()
        room = step.room - 1  # one token of the pass is always the target's own
        limit = self.policy.k_max if self.policy.fixed is None else self.policy.fixed
        found = self.index.propose(step.context, min(limit, room))
        size = min(self.policy.size(found.order), room) if len(found) else 0
        tree = draft_tree(found, best_nodes(found, size))
        self.lookup_seconds.update(time.perf_counter() - started)
        feed, positions, mask = tree_feed(step, tree)
        if is_chain(tree):  # a run of tokens in order: the causal default, no mask to build
            mask = None
        return Plan(feed, positions, mask, num_logits=len(tree) + 1,
                    state=(tree, found.order, len(step.uncached)))

    def commit(self, step: Step, plan: Plan, logits: torch.Tensor, pass_seconds: float) -> Outcome:
        tree, order, n_uncached = plan.state
        walk = verify_tree(step, tree, logits)
        if n_uncached == 1:  # a prefill pass would distort the pass-time estimate
            self.policy.observe(order, len(tree), len(walk.path), walk.rejected, plan.tokens.numel(),
                                pass_seconds)
        return walk.outcome()

    def describe(self) -> str:
        idx = self.index
        orders = f"{idx.min_order}-{idx.max_order}" if idx.min_order < idx.max_order else str(idx.max_order)
        size = (f"{self.policy.fixed} tokens" if self.policy.fixed is not None
                else f"<= {self.policy.k_max} tokens (cost model)")
        return f"prompt lookup (no draft model): {orders}-token matches of the context, {size} per pass"

    def timings(self) -> dict[str, float]:
        return {"lookup_ms_per_pass": self.lookup_seconds.value * 1e3}


def draft_tree(found: Candidates, nodes: list[int]) -> DraftTree:
    """The chosen trie nodes (each after its parent) as a DraftTree; a node's log-probability
    is the share of the occurrences that agree on its path."""
    tree, where = DraftTree(), {-1: -1}
    for node in nodes:
        share = found.counts[node] / found.matches
        where[node] = tree.add(found.tokens[node], parent=where[found.parents[node]], rank=0,
                               cum_logp=math.log(share))
    return tree


def is_chain(tree: DraftTree) -> bool:
    """Every node follows the one before it (also true of an empty tree)."""
    return all(parent == i - 1 for i, parent in enumerate(tree.parents))
