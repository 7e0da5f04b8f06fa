"""Overlapped tree speculation: the draft keeps one tree that outlives the pass
and grows it while the target's weights stream from disk.

Where the draft runs. On the loop's own thread, inside the target's waits: the plan gives
`Plan.idle`, which the weights source calls whenever the next layer is not read yet
(offload/prefetch.py, idle work). One call runs one layer of a batched draft forward (tree
attention over the best `batch` frontier nodes; model.LayerSteps), so a target layer that
arrives meanwhile waits for one draft layer at most, not a whole forward (whole forwards held
the seed-13b passes up by ~0.17 s each, 7% of a pass); none is run when the layer is due within
half a draft layer. A forward the pass ends in the middle of is dropped (its nodes go back to
the frontier) before the next plan touches the draft cache. No second compute thread: torch's
intra-op pool already uses both cores of this machine class, and two compute threads would
halve each other; the reader thread spends its time in preadv with the GIL released.

The tree (growing_tree.py) holds every node the draft proposed; the forwarded ones have
entries in the draft's cache right after the context's. A pass verifies the best N nodes
(estimated reach probability, tree_model.py's hit model: by rank, refined by the draft's
probability and depth); meanwhile the draft grows the
tree best-first, mostly below the nodes sent: the chance a node is useful to the next pass
is its reach probability, wherever it hangs. The next plan walks
the tokens the pass accepted (and the target's own next token) down the tree; if the walk
ends on a forwarded node, the subtree below it is the next tree, its cache entries moved
to follow the new context, and the pass starts at once. Otherwise the draft catches up (one
forward over the tokens it lacks) and starts a new tree.

Lossless as the tree mode: verify.accept_tree walks the sent nodes with the target's own
draws; the draft's probabilities never enter, and the tree is fixed before the pass.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from ..draft import Drafter
from ..model import LayerSteps
from .base import Outcome, Plan, Step, Strategy, common_prefix
from .ema import Ema
from .gate import DraftGate
from .growing_tree import GrowingTree
from .tree import TreeSettings, draft_proposals
from .tree_model import DraftTree, TreeCostModel, path_tokens
from .tree_pass import tree_feed, verify_tree


@dataclass
class _Forward:
    """A draft forward under way in the target's waits, one layer per idle call."""
    nodes: list[int]
    steps: LayerSteps
    seconds: float = 0.0   # compute time of its steps so far


@dataclass
class _Pass:
    sent: DraftTree
    n_context: int         # uncached context tokens fed before the tree
    wait: float = 0.0      # seconds the pass waited for the disk (source stats)
    read: float | None = None  # seconds the reader spent on the layers since the pass before
    delay: float = 0.0     # seconds the pass's layers sat ready while a draft forward ended
    drafting: bool = True  # the gate let the draft run this pass (speculate/gate.py)


class Overlap(Strategy):
    name = "overlap"

    def __init__(self, drafter: Drafter, settings: TreeSettings | None = None, source_stats=None,
                 batch: int = 8, grow_limit: int = 1024, min_reach: float = 1e-4, profile=None):
        """source_stats: the target weights source's stream stats (compute_wait_seconds,
        idle_delay_seconds), None for a target in RAM. grow_limit: forwarded nodes at most.
        min_reach: nodes less likely to be reached are not worth a draft forward."""
        self.drafter = drafter
        self.settings = settings or TreeSettings()
        self.cost = TreeCostModel(self.settings.width, profile=profile)
        self.passes = PassModel(self.cost)
        self.gate = DraftGate()
        self.source_stats = source_stats
        self.batch, self.grow_limit, self.min_logp = batch, grow_limit, math.log(min_reach)
        self.ctx: list[int] = []        # the context tokens held by the draft cache's first slots
        self.tree = GrowingTree()       # rooted at ctx[-1]; forwarded nodes follow ctx's entries
        self._busy = False              # a change to ctx/tree/draft cache is under way
        self._forward: _Forward | None = None  # a draft forward run layer by layer in the waits
        self._params = None
        self._pending = False           # a plan whose commit has not come
        self._counters: dict[str, float] = defaultdict(float)
        self._source_before = (0.0, 0.0)
        self._read_mark: float | None = None  # the source's read_seconds at the last pass's end

    # -- the pass -------------------------------------------------------------------------
    def plan(self, step: Step) -> Plan:
        self._repair()
        if self._pending:  # the last pass failed: its counters belong to no outcome
            self._counters.clear()
        self._params = step.params
        n_ctx = len(step.uncached)
        before = dict(self.drafter.counters)
        drafting = self.settings.fixed or self.gate.should_draft()
        if drafting:
            self._sync(step.context)
            cap = min(self.settings.max_nodes, step.room - 1)
            self._grow_before_pass(n_ctx, cap)
            sent = self.tree.draft_tree(self._choose(n_ctx, cap))
        else:  # drafting does not pay here now: a plain pass; the draft catches up later
            sent = DraftTree()
        # The draft's catch-ups (a prompt, plain passes' tokens) happen here, in _sync: every
        # key reported, zeros included, so the bench can tell them from drafting proper.
        for key, value in self.drafter.counters_since(before).items():
            self._counters[key] += value
        n_tree = len(sent)
        feed, positions, mask = tree_feed(step, sent)
        self._counters["tree_nodes_sent"] += n_tree
        self._pending = True
        # On the budget's last token nothing grown now could be used.
        return Plan(feed, positions, mask, num_logits=n_tree + 1,
                    state=_Pass(sent, n_ctx, drafting=drafting),
                    idle=self._idle if drafting and step.room > 1 else None)

    def pass_started(self, step: Step, plan: Plan) -> None:
        s = self.source_stats
        self._source_before = (s.compute_wait_seconds, s.idle_delay_seconds) if s else (0.0, 0.0)
        if s is not None and self._read_mark is None:
            self._read_mark = s.read_seconds

    def pass_ended(self, step: Step, plan: Plan) -> None:
        s = self.source_stats
        if s is not None:
            # (max: the stats may have been reset meanwhile)
            plan.state.wait = max(0.0, s.compute_wait_seconds - self._source_before[0])
            plan.state.delay = max(0.0, s.idle_delay_seconds - self._source_before[1])
            # From one pass's end to the next the reader reads each streamed layer once, in
            # the pass or ahead of it: the disk's time for a pass, measured apart from compute.
            if self._read_mark is not None:
                plan.state.read = max(0.0, s.read_seconds - self._read_mark)
            self._read_mark = s.read_seconds
        self._counters["tree_nodes_grown"] += len(self.tree)

    def commit(self, step: Step, plan: Plan, logits: torch.Tensor, pass_seconds: float) -> Outcome:
        p: _Pass = plan.state
        self.passes.observe(plan.tokens.numel(), pass_seconds, p.wait, p.delay, p.read)
        # The draft's tree is re-rooted by the next plan, which sees the context these
        # tokens end up in.
        walk = verify_tree(step, p.sent, logits)
        self.cost.observe_walk(p.sent, walk.path, walk.next_token)
        self._counters["pass_wait_seconds"] += p.wait
        self._counters["pass_idle_delay_seconds"] += p.delay
        # A decode pass that drafted: did it pay? (Not asked of the budget's last token: with
        # one token of room the pass had no place for a drafted node.)
        if p.drafting and p.n_context == 1 and step.room > 1:
            self.gate.observe(len(walk.path) + 1, pass_seconds + self._counters["draft_seconds_critical"],
                              self.passes.seconds(1))
        counters, self._counters = dict(self._counters), defaultdict(float)
        self._pending = False
        return walk.outcome(counters)

    def rollback(self, valid: int) -> None:
        # The entry of context token `valid` (the pending one) may stay: the next plan
        # compares the tokens before it trusts any entry.
        self._repair()
        if len(self.ctx) > valid + 1:
            self._truncate(valid + 1)

    # -- the tree across passes -----------------------------------------------------------
    def _sync(self, context: list[int]) -> None:
        """Make the draft cache hold `context` and the tree hang below its last token: keep
        the matching prefix, walk the new tokens down the tree, catch up on the rest."""
        k = len(self.ctx)
        if k >= len(context) + 1 or self.ctx != context[:k]:
            self._truncate(min(common_prefix(self.ctx, context), len(context) - 1))
        extra = context[len(self.ctx):]
        if extra and len(self.tree):
            path = self._walk(extra)
            if len(path) == len(extra):
                self._reroot(path, extra)
            else:
                self._keep_path(path, extra)
        if not len(self.tree):
            if len(self.ctx) == len(context):
                self._truncate(len(context) - 1)  # the root's proposals need its logits
            self._catch_up(context)

    def _walk(self, tokens: list[int]) -> list[int]:
        """The forwarded nodes spelling a prefix of `tokens` from the root."""
        node, path = -1, []
        for token in tokens:
            child = self.tree.child(node, token)
            if child is None or not self.tree.is_forwarded(child):
                break
            path.append(child)
            node = child
        return path

    def _reroot(self, path: list[int], extra: list[int]) -> None:
        base = len(self.ctx)
        sub, kept = self.tree.subtree(path[-1], self.cost.hit_logp)
        # Ascending: each path node was forwarded after its parent, the subtree after them.
        slots = [base + self.tree.slots[p] for p in path] + [base + s for s in kept]
        self._busy = True
        self.drafter.keep(base, torch.tensor(slots, dtype=torch.long))
        self.ctx = self.ctx + extra
        self.tree = sub
        self._busy = False
        self._counters["tree_nodes_carried"] += len(sub)
        self._counters["passes_carried"] += 1

    def _keep_path(self, path: list[int], extra: list[int]) -> None:
        """The walk left the forwarded tree: keep the path's entries, drop the tree."""
        base = len(self.ctx)
        self._busy = True
        self.drafter.keep(base, torch.tensor([base + self.tree.slots[p] for p in path], dtype=torch.long))
        self.ctx = self.ctx + extra[:len(path)]
        self.tree = GrowingTree()
        self._busy = False

    def _truncate(self, n: int) -> None:
        """Keep the first n context entries (at most those that are there); drop the tree."""
        n = max(0, min(n, len(self.ctx), self.drafter.cache.length))
        self._busy = True
        self.drafter.keep(n)
        self.ctx = self.ctx[:n]
        self.tree = GrowingTree()
        self._busy = False

    def _repair(self) -> None:
        """Before the draft cache is touched outside the waits: drop a forward the pass ended
        in the middle of (it wrote only uncommitted slots; its nodes wait in the frontier
        again). After an interruption (Ctrl-C inside a draft forward, an error in the pass)
        keep only what is certainly right: the context entries."""
        if self._forward is not None and not self._busy:
            self.tree.requeue(self._forward.nodes)
            self._counters["draft_forwards_dropped"] += 1
        self._forward = None
        if self._busy or self.drafter.cache.length != len(self.ctx) + self.tree.forwarded:
            self._busy = False
            self._truncate(len(self.ctx))

    # -- drafting ---------------------------------------------------------------------------
    def _catch_up(self, context: list[int]) -> None:
        """One draft forward over the context tokens the cache lacks; the tree restarts
        from the root's proposals (on the critical path)."""
        fed = len(context) - self.drafter.cache.length
        self._busy = True
        started = time.perf_counter()
        logits = self.drafter.catch_up(context)
        self.ctx = list(context)
        self.tree = GrowingTree()
        self._propose(-1, logits)
        seconds = time.perf_counter() - started
        if fed <= self.batch:  # a prompt prefill says nothing about a tree forward's cost
            self.cost.observe_draft(seconds)
        self._count("critical", seconds)
        self._busy = False

    def _forward_critical(self, size: int) -> None:
        """One draft forward before the pass over the best `size` frontier nodes (tree
        attention): they get cache entries and their own proposals as children. (In the
        waits the forward runs a layer at a time: _step_hidden.)"""
        self._busy = True
        started = time.perf_counter()
        nodes = self.tree.take_frontier(size)
        logits = self.drafter.forward(*self._batch_inputs(nodes))
        self._forwarded(nodes, logits)
        self._counters["draft_nodes_critical"] += len(nodes)
        seconds = time.perf_counter() - started
        self.cost.observe_draft(seconds)
        self._count("critical", seconds)
        self._busy = False

    def _batch_inputs(self, nodes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens, rope positions and tree mask for forwarding `nodes` after the cache."""
        base = len(self.ctx)
        root = int(self.drafter.cache.positions[base - 1])
        depths = torch.tensor([self.tree.depths[i] for i in nodes], dtype=torch.long)
        return (torch.tensor([self.tree.tokens[i] for i in nodes]), root + depths,
                self.tree.batch_mask(nodes, base))

    def _forwarded(self, nodes: list[int], logits: torch.Tensor) -> None:
        """`nodes` now have the cache entries a forward committed: their proposals join."""
        self.tree.mark_forwarded(nodes)
        self._counters["draft_nodes_forwarded"] += len(nodes)  # the bench's cost per node
        for row, node in zip(logits, nodes):
            self._propose(node, row)

    def _step_hidden(self) -> None:
        """One layer of the forward under way in the waits (one is started over the best
        frontier nodes if none is); the last layer adds its nodes' proposals."""
        self._busy = True
        started = time.perf_counter()
        if self._forward is None:
            nodes = self.tree.take_frontier(self.batch)
            self._forward = _Forward(nodes, self.drafter.forward_steps(*self._batch_inputs(nodes)))
        f = self._forward
        done = f.steps.step()
        if done:
            self._forwarded(f.nodes, f.steps.logits)
            self._forward = None
        f.seconds += time.perf_counter() - started
        self._busy = False
        if done:
            self.cost.observe_draft(f.seconds)
            self._count("hidden", f.seconds)

    def _propose(self, node: int, logits: torch.Tensor) -> None:
        base = self.tree.scores[node] if node >= 0 else 0.0
        # A node's history (ctx + its path) stays the same when the tree is re-rooted below
        # a longer ctx, so proposals made under the penalty stay right across passes.
        path = path_tokens(self.tree, node)
        depth = len(path) + 1
        for token, rank, confidence in draft_proposals(self.drafter, logits, self.settings.width,
                                                       self._params, self.ctx, path):
            score = base + self.cost.hit_logp(rank, depth, confidence)
            self.tree.add(token, parent=node, rank=rank, score=score, confidence=confidence)

    def _count(self, where: str, seconds: float) -> None:
        self._counters[f"draft_seconds_{where}"] += seconds
        self._counters[f"draft_forwards_{where}"] += 1

    def _can_grow(self) -> bool:
        best = self.tree.best_frontier_score()
        cache = self.drafter.cache
        return (best is not None and best >= self.min_logp and not self._busy
                and self.tree.forwarded + self.batch <= self.grow_limit
                and cache.length + self.batch <= cache.max_len)

    def _idle(self, eta: float | None = None) -> bool:
        """The target waits for the disk: grow the tree by one layer of a draft forward.
        False when there is nothing worth growing, or when the layer is due in less than half
        a draft layer's time (`eta`, the source's estimate): the weights source then just
        waits."""
        layer_seconds = self.cost.draft_forward_seconds / max(self.drafter.model.args.num_layers, 1)
        if eta is not None and eta < 0.5 * layer_seconds:
            return False
        if self._forward is None and not self._can_grow():
            return False
        self._step_hidden()
        return True

    def _grow_before_pass(self, fed: int, cap: int) -> None:
        """Grow on the critical path what this pass needs. A fixed size grows to `cap` nodes in
        batches (past that, growing during the pass is free and serves the next one).
        Otherwise one node at a time, the best, while the cost model says a forward pays,
        whether or not the tree already has `cap` nodes: a tree restarted from its root then
        goes deep where the draft is sure, as the tree mode's builder does (batches of eight
        filled `cap` with proposals in ~3 forwards, breadth first: a strong draft's restarted
        trees stopped 4-5 levels deep), and a carried tree that the waits grew wide goes
        deeper along its best branch (its `cap` best nodes had stopped growing it at all)."""
        if self.settings.fixed:
            while len(self.tree) < cap and self._can_grow():
                self._forward_critical(self.batch)
            return
        forwards = 0
        while self._can_grow() and self._worth_growing(fed, cap, forwards):
            self._forward_critical(1)
            forwards += 1

    def _worth_growing(self, fed: int, cap: int, forwards: int) -> bool:
        """Would one more draft forward, of the best frontier node, before the pass raise the
        expected tokens per second? Its proposals' scores are known before it runs (parent
        score + rank)."""
        t_d = self.cost.draft_forward_seconds
        now = sorted((self.tree.scores[i] for i in self.tree.best(cap)), reverse=True)
        new = [s + self.cost.rank_logp(r) for s in self.tree.frontier_scores(1)
               for r in range(self.settings.width)]
        after = sorted(now + new, reverse=True)[:cap]
        return (self._best_n(after, fed, (forwards + 1) * t_d)[1]
                > self._best_n(now, fed, forwards * t_d)[1])

    # -- sizing the pass --------------------------------------------------------------------
    def _choose(self, fed: int, cap: int) -> list[int]:
        """The nodes to verify: the best `cap` (all of them for a fixed size), cut where the
        expected tokens per second of the pass peak."""
        if cap <= 0:
            return []
        nodes = self.tree.best(cap)
        if self.settings.fixed:
            return nodes
        n, _ = self._best_n([self.tree.scores[i] for i in nodes], fed, 0.0)
        return nodes[:n]

    def _best_n(self, scores: list[float], fed: int, extra_seconds: float) -> tuple[int, float]:
        """(n, rate): verifying the first n of `scores` (descending log reach probabilities)
        gives the best expected tokens per second, `extra_seconds` added to the pass."""
        best = (0, 1.0 / max(self.passes.seconds(fed) + extra_seconds, 1e-9))
        expected = 1.0
        for i, s in enumerate(scores):
            expected += math.exp(s)
            rate = expected / max(self.passes.seconds(fed + i + 1) + extra_seconds, 1e-9)
            if rate > best[1]:
                best = (i + 1, rate)
        return best

    def describe(self) -> str:
        s = self.settings
        size = s.max_nodes if s.fixed else f"<= {s.max_nodes} (cost model)"
        return f"overlapped tree speculation, {size} nodes, width {s.width}, drafting while the target streams"

    def timings(self) -> dict[str, float]:
        return {"draft_ms_per_tree_forward": self.cost.draft_forward_seconds * 1e3,
                "pass_disk_ms": self.passes.disk_seconds * 1e3}


class PassModel:
    """What a pass over n tokens costs: its compute, c0 + c1 * n (TreeCostModel's fit, over
    the passes' compute times), or the disk's time for the pass where that is longer, plus
    what neither explains (the part of a pass that overlaps nothing).

    A pass's wall time is compute + the time it waited for layers (+ the delay idle draft
    work added); the weights source reports the wait, so compute is measured apart from the
    disk, and its reader's own time per pass is the disk's. (Without that reading: a pass that
    waited counts as disk-bound, its time being the disk's; one that never waited says the
    disk takes at most that long. Taking a wall time that is mostly compute for the disk's
    made a large tree look free, and on AVX2, where the int4 kernel's time grows steeply with
    tokens, the overlapped tree then sent ~11 nodes a pass against the tree mode's ~3.) In RAM
    there is no wait and this is the plain fit of pass times."""

    def __init__(self, cost: TreeCostModel):
        self.cost = cost
        self._disk = Ema()
        self._overhead = Ema()

    @property
    def disk_seconds(self) -> float:
        return self._disk.value

    def observe(self, tokens: int, wall: float, wait: float, delay: float,
                read: float | None = None) -> None:
        undisturbed = max(wall - delay, 1e-9)
        compute = max(undisturbed - wait, 1e-9)
        self.cost.observe_pass(tokens, compute)
        if read:
            self._disk.update(read)
            self._overhead.update(max(undisturbed - max(read, compute), 0.0))
        elif wait > 0:
            self._disk.update(undisturbed)
        else:
            self._disk.value = min(self._disk.value, undisturbed)

    def seconds(self, tokens: int) -> float:
        return max(self._disk.value, self.cost.pass_seconds(tokens)) + self._overhead.value
