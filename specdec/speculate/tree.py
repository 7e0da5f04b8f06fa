"""Tree speculation (SpecExec-style): the draft grows a best-first tree of candidate
continuations, the target scores every node in one pass (tree attention), and the
target's own draws walk down it (verify.accept_tree). The tree and its cost model live
in tree_model.py, its layout and verification in tree_pass.py; this module builds the
tree and keeps the draft's cache in step with the accepted path."""
from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass

import torch

from ..draft import Drafter
from ..penalty import penalize
from ..sampling import SamplingParams, probs_from_logits
from .base import Outcome, Plan, Step, Strategy
from .gate import DraftGate
from .lookup_branches import LOOKUP_RANK, Graft, LookupBranches
from .tree_model import DraftTree, TreeCostModel, path_tokens
from .tree_pass import node_positions, tree_feed, verify_tree


@dataclass
class TreeSettings:
    """Tree speculation: up to `max_nodes` drafted tokens per pass (exactly that many when
    `fixed`), each node offering its `width` most probable children; plus up to `lookup`
    nodes of prompt-lookup branches (speculate/lookup_branches.py; 0: none)."""
    max_nodes: int = 64
    width: int = 4
    fixed: bool = False
    lookup: int = 0

    def __post_init__(self):
        for name in ("max_nodes", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tree {name} must be a positive integer, got {value!r}")
        if isinstance(self.lookup, bool) or not isinstance(self.lookup, int) or self.lookup < 0:
            raise ValueError(f"lookup branch nodes must be an integer >= 0, got {self.lookup!r}")


@dataclass
class _Pass:
    tree: DraftTree
    n_context: int   # uncached context tokens fed before the tree
    draft_seconds: float = 0.0  # building the tree (on the critical path)
    drafting: bool = True       # the gate let the draft run this pass
    graft: Graft | None = None  # the lookup branches added to the tree
    counters: dict[str, float] | None = None  # the drafter's catch-ups this pass (draft.py)


class Tree(Strategy):
    name = "tree"

    def __init__(self, drafter: Drafter, settings: TreeSettings | None = None, profile=None):
        self.drafter = drafter
        self.settings = settings or TreeSettings()
        self.cost = TreeCostModel(self.settings.width, profile=profile)
        self.gate = DraftGate()
        s = self.settings
        self.lookup = LookupBranches(s.lookup, fixed=s.fixed) if s.lookup else None

    def plan(self, step: Step) -> Plan:
        s = self.settings
        n_ctx = len(step.uncached)
        started = time.perf_counter()
        before = dict(self.drafter.counters)
        drafting = s.fixed or self.gate.should_draft()
        if drafting:
            tree = build_tree(self.drafter, step.context, min(s.max_nodes, step.room - 1), s.width,
                              step.params, self.cost, n_ctx, s.fixed)
        else:  # drafting does not pay here now (speculate/gate.py): a plain pass
            tree = DraftTree()
        draft_seconds = time.perf_counter() - started
        graft = self._graft(step, tree, n_ctx, draft_seconds)
        feed, positions, mask = tree_feed(step, tree)
        return Plan(feed, positions, mask, num_logits=len(tree) + 1,
                    state=_Pass(tree, n_ctx, draft_seconds, drafting, graft,
                                self.drafter.counters_since(before)))

    def _graft(self, step: Step, tree: DraftTree, n_ctx: int, draft_seconds: float) -> Graft | None:
        """Prompt-lookup branches onto the drafted tree, as many as the cost model says pay."""
        if self.lookup is None:
            return None
        tokens = 1 + tree.expected_accepted()

        def rate(new_nodes: int, extra_tokens: float) -> float:
            seconds = self.cost.pass_seconds(n_ctx + len(tree) + new_nodes) + draft_seconds
            return (tokens + extra_tokens) / max(seconds, 1e-9)
        return self.lookup.graft(tree, step.context, step.room - 1, rate)

    def commit(self, step: Step, plan: Plan, logits: torch.Tensor, pass_seconds: float) -> Outcome:
        tree = plan.state.tree
        self.cost.observe_pass(plan.tokens.numel(), pass_seconds)
        walk = verify_tree(step, tree, logits)
        path = walk.path
        self.cost.observe_walk(tree, path, walk.next_token)
        counters = dict(plan.state.counters or {})
        if plan.state.graft is not None:
            self.lookup.observe(plan.state.graft, tree, path)
            counters.update(lookup_nodes=plan.state.graft.added,
                            lookup_taken=sum(tree.ranks[i] == LOOKUP_RANK for i in path))
        # The draft's cache keeps the accepted path's forwarded nodes, as the target's did.
        ctx_end = len(step.context)
        self.drafter.keep(ctx_end, torch.tensor([ctx_end + i for i in path if i < tree.forwarded],
                                                dtype=torch.long))
        # A decode pass that drafted; with one token of room (the budget's last) it had no
        # place for a drafted node, and says nothing about whether drafting pays.
        if plan.state.drafting and plan.state.n_context == 1 and step.room > 1:
            self.gate.observe(len(path) + 1, pass_seconds + plan.state.draft_seconds,
                              self.cost.pass_seconds(1), self.cost.pass_time.measured(1))
        return walk.outcome(counters)

    def rollback(self, valid: int) -> None:
        self.drafter.keep(valid)

    def describe(self) -> str:
        s = self.settings
        size = s.max_nodes if s.fixed else f"<= {s.max_nodes} (cost model)"
        lookup = f", {self.lookup.describe()}" if self.lookup else ""
        return f"tree speculation, {size} nodes, width {s.width}{lookup}"

    def timings(self) -> dict[str, float]:
        return {"draft_ms_per_tree_forward": self.cost.draft_forward_seconds * 1e3}


def build_tree(drafter: Drafter, context: list[int], max_nodes: int, width: int,
               params: SamplingParams, cost: TreeCostModel, fed_before_tree: int,
               fixed_size: bool, lookahead: int = 8) -> DraftTree:
    """Grow a draft tree best-first by estimated reach (SpecExec): take the most probable
    candidate into the tree, one at a time; each node's `width` most probable children
    become candidates once the draft has run on it. Nodes wait to be run in a batch (one
    forward, tree attention) until their likely children would beat the best candidate by
    more than a forward costs (_forward_first). Stops at `max_nodes`, or, unless
    `fixed_size`, when the cost model says none of the next `lookahead` candidates' groups
    (the best one, the best two, ...) would raise the expected tokens per second. The draft
    cache ends holding the context and the forwarded nodes, in node order; the last nodes
    taken may never be forwarded (their children are not needed)."""
    root_logits = drafter.catch_up(context)
    base = drafter.cache.length
    first_child = int(drafter.cache.next_positions(1)[0])
    tree, heap, order = DraftTree(), [], itertools.count()
    _offer_children(drafter, heap, order, -1, 0.0, root_logits, width, params, cost, context, [], 1)
    forwards = 1
    while len(tree) < max_nodes:
        if tree.forwarded < len(tree) and _forward_first(tree, heap, cost, fed_before_tree, forwards,
                                                         fixed_size):
            _forward(drafter, tree, heap, order, base, first_child, width, params, cost, context)
            forwards += 1
            continue
        if not heap or (not fixed_size and
                        not _worth_it(tree, heap, lookahead, cost, fed_before_tree, forwards)):
            break
        neg_logp, _, parent, token, rank, confidence = heapq.heappop(heap)
        tree.add(token, parent=parent, rank=rank, cum_logp=-neg_logp, confidence=confidence)
    return tree


def _forward(drafter: Drafter, tree: DraftTree, heap, order, base: int, first_child: int, width: int,
             params: SamplingParams, cost: TreeCostModel, context: list[int]) -> None:
    """Run the draft on the tree's nodes not forwarded yet (one batch) and offer their children."""
    first = tree.forwarded
    started = time.perf_counter()
    logits = drafter.forward(torch.tensor(tree.tokens[first:]),
                             node_positions(first_child, tree.depths[first:]),
                             mask=tree.attention_mask(base, first, len(tree) - first))
    cost.observe_draft(time.perf_counter() - started)
    tree.forwarded = len(tree)
    for j, row in enumerate(logits):
        node = first + j
        _offer_children(drafter, heap, order, node, tree.cum_logp[node], row, width, params, cost,
                        context, path_tokens(tree, node), tree.depths[node] + 1)


def _forward_first(tree: DraftTree, heap, cost: TreeCostModel, fed: int, forwards: int,
                   fixed_size: bool) -> bool:
    """Whether to run the draft on the waiting nodes before taking another candidate: when the
    likeliest child one of them can expect (its reach times the rank-0 hit rate) beats the
    best candidate by more than the tokens a forward's seconds earn at the tree's current
    rate. Forwarding every batch of eight kept trees three levels deep (16 nodes: batches of
    4, 8, 4), where a strong draft's chain goes further; waiting for the next forward only
    while it is dear keeps a cheap draft's trees deep and a dear one's wide. With no
    candidate left, a fixed-size tree must forward; an adaptive one, if the children it can
    expect (one each) pay for the forward."""
    waiting = range(tree.forwarded, len(tree))
    children = [tree.cum_logp[i] + cost.rank_logp(0) for i in waiting]
    if not heap:
        if fixed_size:
            return True
        n = len(tree)
        tokens = 1 + tree.expected_accepted(n) + sum(math.exp(c) for c in children)
        seconds = cost.pass_seconds(fed + n + len(children)) + (forwards + 1) * cost.draft_forward_seconds
        return tokens / max(seconds, 1e-9) > cost.rate(tree, n, fed, forwards)
    child, best = max(children), -heap[0][0]
    if child <= best:  # the common case while a level fills: no pass-time fit needed
        return False
    rate = cost.rate(tree, len(tree), fed, forwards)
    return math.exp(child) - math.exp(best) > cost.draft_forward_seconds * rate


def _worth_it(tree: DraftTree, heap, lookahead: int, cost: TreeCostModel, fed: int,
              forwards: int) -> bool:
    """Whether taking the best candidates raises the expected tokens per second: the best one,
    or the best two, ... up to `lookahead` (a node's share of a pass can be within the fit's
    noise, so a few are priced together; but a group of eight, weak ones included, stopped
    strong-draft trees at ~7 nodes where the best next node alone paid)."""
    n = len(tree)
    now = cost.rate(tree, n, fed, forwards)
    tokens = 1 + tree.expected_accepted(n)
    draft = forwards * cost.draft_forward_seconds
    for j, (neg_logp, *_) in enumerate(heapq.nsmallest(lookahead, heap), start=1):
        tokens += math.exp(-neg_logp)
        if tokens / max(cost.pass_seconds(fed + n + j) + draft, 1e-9) > now:
            return True
    return False


def _offer_children(drafter: Drafter, heap, order, node: int, cum_logp: float, logits: torch.Tensor,
                    width: int, params: SamplingParams, cost: TreeCostModel,
                    context: list[int], path: list[int], depth: int) -> None:
    # Each proposal is scored by how often the target takes a proposal of that rank, draft
    # probability and depth.
    for token, rank, confidence in draft_proposals(drafter, logits, width, params, context, path):
        score = cum_logp + cost.hit_logp(rank, depth, confidence)
        heapq.heappush(heap, (-score, next(order), node, token, rank, confidence))


def draft_proposals(drafter: Drafter, logits: torch.Tensor, width: int, params: SamplingParams,
                    context: list[int], path: list[int]) -> list[tuple[int, int, float]]:
    """The draft's `width` favourites after one node, as (token, rank, probability): under the same
    sampling settings (plain softmax when greedy, as a one-hot would not order the
    runners-up), leaving out tokens the settings give no mass. `path`: the tree's tokens
    from the context to the node, which the repetition penalty counts with the context."""
    logits = penalize(drafter.align(logits), params, context, [path])
    probs = torch.softmax(logits.float(), -1) if params.greedy else probs_from_logits(logits, params)
    top = torch.topk(probs, min(width, probs.numel()))
    return [(token, rank, p) for rank, (p, token) in enumerate(zip(top.values.tolist(), top.indices.tolist()))
            if p > 0]
