"""The drafter: proposes k tokens from the small model, and the policy choosing k."""
from __future__ import annotations

import heapq
import itertools
import math
import time

import torch

from .model import Transformer
from .sampling import SamplingParams, probs_from_logits, sample
from .tree import DraftTree, TreeCostModel


class Drafter:
    def __init__(self, model: Transformer, max_context: int, target_vocab: int):
        self.model = model
        self.cache = model.new_cache(max_context)
        self.target_vocab = target_vocab
        self.seconds_per_token = 0.0  # EMA of one draft token: a one-token forward + the pick

    def _forward(self, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
        # A draft whose (padded) vocabulary is smaller than the target's cannot embed the
        # rare target ids beyond it: feed it its last id instead. The draft only guesses
        # and the target verifies, so the output stays exact.
        tokens = tokens.clamp(max=self.model.args.vocab_size - 1)
        return self.model.forward(tokens, self.cache, **kwargs)

    def rollback(self, valid: int) -> None:
        """Keep only the cached entries of the first `valid` context tokens."""
        self.cache.crop(min(self.cache.length, valid))

    def propose(self, context: list[int], k: int, params: SamplingParams,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draft k tokens after `context`: (tokens [k], q [k, target vocab] or None if greedy).
        The draft first catches up on context tokens it has not seen (a new prompt, or the
        target's token after a pass), so its cache always ends one behind the drafts."""
        feed = torch.tensor(context[self.cache.length:], dtype=torch.long)
        started = time.perf_counter()
        logits = self._forward(feed, last_only=True)
        # A draft token costs one forward plus picking from its logits. The catch-up
        # forward counts when it is a decode step (1-2 tokens), not a prompt prefill.
        timed = len(feed) <= 2
        tokens, dists = [], []
        for i in range(k):
            logits = self._align(logits[-1])
            if params.greedy:
                tokens.append(int(logits.argmax()))
            else:
                q = probs_from_logits(logits, params)
                dists.append(q)
                tokens.append(int(sample(q, generator)))
            if timed:
                self._time(time.perf_counter() - started)
            if i < k - 1:
                started, timed = time.perf_counter(), True
                logits = self._forward(torch.tensor(tokens[-1:]))
        q = torch.stack(dists) if dists else None
        return torch.tensor(tokens, dtype=torch.long), q

    def build_tree(self, context: list[int], max_nodes: int, width: int, params: SamplingParams,
                   cost: TreeCostModel, fed_before_tree: int, fixed_size: bool,
                   batch: int = 8) -> DraftTree:
        """Grow a draft tree best-first by cumulative draft probability (SpecExec): take the
        `batch` most probable candidates, run the draft on them in one forward (tree
        attention), and offer each one's `width` most probable children as candidates.
        Stops at `max_nodes`, or, unless `fixed_size`, when the cost model says another
        batch would lower the expected tokens per second. The draft cache ends holding
        the context and the forwarded nodes, in node order."""
        feed = torch.tensor(context[self.cache.length:], dtype=torch.long)
        root_logits = self._forward(feed, last_only=True)[-1]
        base = self.cache.length
        root_pos = int(self.cache.positions[base - 1])
        tree, heap, order = DraftTree(), [], itertools.count()
        self._offer_children(heap, order, -1, 0.0, root_logits, width, params, cost)
        forwards = 1
        while heap and len(tree) < max_nodes:
            picked = [heapq.heappop(heap) for _ in range(min(batch, max_nodes - len(tree), len(heap)))]
            if not fixed_size and not self._worth_it(tree, picked, cost, fed_before_tree, forwards):
                break
            first = len(tree)
            for neg_logp, _, parent, token, rank in picked:
                tree.add(token, parent, -neg_logp, rank)
            if len(tree) >= max_nodes:
                break  # their children could not be used: skip the forward
            started = time.perf_counter()
            logits = self._forward(
                torch.tensor(tree.tokens[first:]),
                positions=torch.tensor([root_pos + d for d in tree.depths[first:]]),
                tree_mask=tree.attention_mask(base, first, len(tree) - first))
            cost.observe_draft(time.perf_counter() - started)
            forwards += 1
            tree.forwarded = len(tree)
            for j, row in enumerate(logits):
                node = first + j
                self._offer_children(heap, order, node, tree.cum_logp[node], row, width, params, cost)
        return tree

    @staticmethod
    def _worth_it(tree: DraftTree, picked, cost: TreeCostModel, fed: int, forwards: int) -> bool:
        n = len(tree)
        now = cost.rate(tree, n, fed, forwards)
        gain = sum(math.exp(-neg_logp) for neg_logp, *_ in picked)
        tokens = 1 + tree.expected_accepted(n) + gain
        seconds = cost.pass_seconds(fed + n + len(picked)) + (forwards + 1) * cost.draft_forward_seconds
        return tokens / max(seconds, 1e-9) > now

    def _offer_children(self, heap, order, node: int, cum_logp: float, logits: torch.Tensor,
                        width: int, params: SamplingParams, cost: TreeCostModel) -> None:
        # The draft's `width` favourites (under the same sampling settings; plain softmax
        # when greedy, as a one-hot would not order the runners-up), scored by how often
        # the target takes a proposal of that rank.
        logits = self._align(logits)
        probs = torch.softmax(logits.float(), -1) if params.greedy else probs_from_logits(logits, params)
        top = torch.topk(probs, min(width, probs.numel()))
        for rank, (p, token) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            if p > 0:
                score = cum_logp + cost.rank_logp(rank)
                heapq.heappush(heap, (-score, next(order), node, token, rank))

    def _align(self, logits: torch.Tensor) -> torch.Tensor:
        # Vocabularies may be padded to different sizes: ids the target lacks get no mass.
        n = self.target_vocab
        if logits.numel() >= n:
            return logits[:n]
        pad = torch.full((n - logits.numel(),), float("-inf"))
        return torch.cat([logits, pad])

    def _time(self, seconds: float) -> None:
        a = self.seconds_per_token
        self.seconds_per_token = seconds if a == 0 else 0.8 * a + 0.2 * seconds


class DraftLengthPolicy:
    """Chooses k to maximise expected tokens per second.

    With per-token acceptance a, a pass with k drafts yields E(k) = (1 - a^(k+1)) / (1 - a)
    tokens and costs T_target + k * T_draft. We estimate a from (accepted, rejected)
    counts with exponential forgetting, T_target and T_draft from measured times (EMA),
    and pick the k in [1, k_max] with the best E(k) / cost. A fixed k skips all this.
    """

    def __init__(self, k: int | None = None, k_max: int = 16, k_start: int = 4, decay: float = 0.9):
        if k is not None and not (isinstance(k, int) and k >= 0):
            raise ValueError(f"k must be an integer >= 0 (0 = plain decoding), got {k!r}")
        self.fixed = k
        self.k_max = k_max
        self.k = k if k is not None else k_start
        self.decay = decay
        self.accepted = 1.0  # weak prior: a = 0.5
        self.rejected = 1.0
        self.target_seconds = 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def update(self, drafted: int, accepted: int, target_seconds: float, draft_seconds: float) -> int:
        if drafted:
            self.accepted = self.decay * self.accepted + accepted
            self.rejected = self.decay * self.rejected + (1 if accepted < drafted else 0)
        t = self.target_seconds
        self.target_seconds = target_seconds if t == 0 else 0.8 * t + 0.2 * target_seconds
        if self.fixed is None:
            self.k = self.best_k(self.acceptance, self.target_seconds, draft_seconds)
        return self.k

    def best_k(self, a: float, t_target: float, t_draft: float) -> int:
        a = min(a, 0.999)
        def rate(k):
            return (1 - a ** (k + 1)) / (1 - a) / (t_target + k * t_draft + 1e-9)
        return max(range(1, self.k_max + 1), key=rate)
