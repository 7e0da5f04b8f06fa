"""The decoding loop: draft -> verify in one target pass -> roll back -> emit.

State is the token context plus the two caches. The target cache always holds the
context minus its last token (the "pending" token, fed at the start of the next pass),
so a pass feeds [uncached context..., drafts...] and its last k+1 logits score the
drafts and give the next token. A new prompt that shares a prefix with the context
(the next chat turn) reuses both caches up to the shared prefix. With no drafter (or
k = 0) this is plain decoding on the same runtime.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .draft import Drafter, DraftLengthPolicy
from .model import Transformer
from .sampling import SamplingParams, probs_from_logits
from .tree import TreeCostModel
from .verify import accept_greedy, accept_sampled, accept_tree

SPECULATION_MODES = ("chain", "tree")


@dataclass
class TreeSettings:
    """Tree speculation: up to `max_nodes` drafted tokens per pass (exactly that many when
    `fixed`), each node offering its `width` most probable children."""
    max_nodes: int = 64
    width: int = 4
    fixed: bool = False


class ContextLimitError(ValueError):
    """The prompt does not fit the context."""


@dataclass
class GenerationStats:
    target_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0  # passes that ended on a drafted token the target did not take
    new_tokens: int = 0
    prefilled_tokens: int = 0  # prompt tokens the target processed (the rest came from the cache)
    bytes_read: int = 0
    seconds: float = 0.0
    k_used: list[int] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def token_acceptance(self) -> float:
        """How often the target takes a drafted token when one is offered (the per-token
        acceptance a of the speculative decoding papers). Unlike acceptance_rate it does not
        fall when more tokens are drafted after the first rejection, and it means the same
        for a tree (offered: any of a node's children) as for a chain."""
        offered = self.accepted + self.rejected
        return self.accepted / offered if offered else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.new_tokens / self.target_passes if self.target_passes else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        mean_k = sum(self.k_used) / len(self.k_used) if self.k_used else 0.0
        return {"target_passes": self.target_passes, "drafted": self.drafted,
                "accepted": self.accepted, "acceptance_rate": round(self.acceptance_rate, 4),
                "rejected": self.rejected, "token_acceptance": round(self.token_acceptance, 4),
                "new_tokens": self.new_tokens, "tokens_per_pass": round(self.tokens_per_pass, 4),
                "prefilled_tokens": self.prefilled_tokens, "bytes_read": self.bytes_read,
                "seconds": round(self.seconds, 4),
                "tokens_per_second": round(self.tokens_per_second, 3),
                "k": round(mean_k, 3), "stop_reason": self.stop_reason}


class Engine:
    def __init__(self, target: Transformer, drafter: Drafter | None, max_context: int,
                 policy: DraftLengthPolicy, bytes_read: Callable[[], int] = lambda: 0,
                 speculation: str = "chain", tree: TreeSettings | None = None):
        if speculation not in SPECULATION_MODES:
            raise ValueError(f"speculation must be one of {SPECULATION_MODES}, got {speculation!r}")
        self.speculation = speculation
        self.tree = tree or TreeSettings()
        self.tree_cost = TreeCostModel()
        self.target = target
        self.drafter = drafter
        self.cache = target.new_cache(max_context)
        self.max_context = max_context
        self.policy = policy
        self.bytes_read = bytes_read
        self.context: list[int] = []

    def reset(self) -> None:
        self.context = []
        self._rollback(0)

    def run(self, prompt: list[int], max_new_tokens: int, params: SamplingParams,
            generator: torch.Generator | None, stop_ids: set[int], stats: GenerationStats
            ) -> Iterator[list[int]]:
        """Yield lists of newly accepted tokens; `stats` is filled in as it goes."""
        stats.prefilled_tokens = self._start(prompt)
        budget_end = len(prompt) + max_new_tokens
        stats.stop_reason = "max_new_tokens"
        try:
            while len(self.context) < budget_end:
                room = min(budget_end, self.max_context) - len(self.context)
                if room <= 0:
                    stats.stop_reason = "context_full"
                    break
                if self.drafter is not None and self.speculation == "tree":
                    new = self._step_tree(room - 1, params, generator, stats)
                else:
                    new = self._step(min(self._k(), room - 1), params, generator, stats)
                new, stopped = _cut_at_stop(new, stop_ids)
                new = new[:budget_end - len(self.context)]
                self._accept(new)
                stats.new_tokens += len(new)
                yield new
                if stopped:
                    stats.stop_reason = "eos"
                    break
        finally:
            # Whatever ended the loop (a stop, an exception, KeyboardInterrupt, the caller
            # closing the generator), leave caches matching the context.
            self._rollback(len(self.context) - 1)

    def _start(self, prompt: list[int]) -> int:
        """Make `prompt` the context, reusing cached entries of a shared prefix; return how
        many prompt tokens the target still has to process."""
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        if len(prompt) >= self.max_context:
            raise ContextLimitError(
                f"the prompt has {len(prompt)} tokens but the context holds {self.max_context}; "
                "shorten the prompt (or /reset the chat) or load with a larger max_context.")
        shared = _common_prefix(self.context, prompt)
        self.context = list(prompt)
        self._rollback(min(shared, len(prompt) - 1))
        return len(prompt) - self.cache.length

    def _k(self) -> int:
        return self.policy.k if self.drafter is not None else 0

    def _step(self, k: int, params, generator, stats: GenerationStats) -> list[int]:
        drafts, q = torch.zeros(0, dtype=torch.long), None
        draft_seconds = 0.0
        if k > 0:
            drafts, q = self.drafter.propose(self.context, k, params, generator)
            draft_seconds = self.drafter.seconds_per_token
        uncached = self.context[self.cache.length:]
        feed = torch.cat([torch.tensor(uncached, dtype=torch.long), drafts])
        started, read_before = time.perf_counter(), self.bytes_read()
        logits = self.target.forward(feed, self.cache, num_logits=k + 1)
        pass_seconds = time.perf_counter() - started
        stats.bytes_read += self.bytes_read() - read_before
        if params.greedy:
            n, nxt = accept_greedy(drafts, logits)
        else:
            n, nxt = accept_sampled(drafts, q, probs_from_logits(logits, params), generator)
        stats.target_passes += 1
        stats.drafted += k
        stats.accepted += n
        stats.rejected += n < k
        if k > 0:
            stats.k_used.append(k)
            if len(uncached) == 1:  # a prefill pass would distort the pass-time estimate
                self.policy.update(k, n, pass_seconds, draft_seconds)
        return drafts[:n].tolist() + [nxt]

    def _step_tree(self, room: int, params, generator, stats: GenerationStats) -> list[int]:
        uncached = self.context[self.cache.length:]
        settings = self.tree
        tree = self.drafter.build_tree(self.context, min(settings.max_nodes, room), settings.width,
                                       params, self.tree_cost, len(uncached), settings.fixed)
        start, n_ctx, n_tree = self.cache.length, len(uncached), len(tree)
        first_pos = int(self.cache.positions[start - 1]) + 1 if start else 0
        root_pos = first_pos + n_ctx - 1
        positions = torch.tensor(list(range(first_pos, root_pos + 1)) + [root_pos + d for d in tree.depths])
        mask = torch.ones(n_ctx + n_tree, start + n_ctx + n_tree, dtype=torch.bool)
        mask[:n_ctx, start:] = torch.ones(n_ctx, n_ctx + n_tree, dtype=torch.bool).tril()
        mask[n_ctx:] = tree.attention_mask(start + n_ctx, 0, n_tree)
        feed = torch.tensor(uncached + tree.tokens, dtype=torch.long)
        started, read_before = time.perf_counter(), self.bytes_read()
        logits = self.target.forward(feed, self.cache, positions=positions, tree_mask=mask,
                                     num_logits=n_tree + 1)
        self.tree_cost.observe_pass(len(feed), time.perf_counter() - started)
        stats.bytes_read += self.bytes_read() - read_before
        path, nxt = accept_tree(tree, logits, params, generator)
        self.tree_cost.observe_walk(tree, path, nxt)
        # Compaction: the accepted path's entries move to consecutive slots after the
        # context in both caches; the other branches are dropped.
        ctx_end = start + n_ctx
        self.cache.keep(ctx_end, torch.tensor([ctx_end + i for i in path], dtype=torch.long))
        base = len(self.context)
        in_draft = [base + i for i in path if i < tree.forwarded]
        self.drafter.cache.keep(base, torch.tensor(in_draft, dtype=torch.long))
        stats.target_passes += 1
        stats.drafted += n_tree
        stats.accepted += len(path)
        stats.rejected += bool(tree.children(path[-1] if path else -1))
        stats.k_used.append(n_tree)
        return [tree.tokens[i] for i in path] + [nxt]

    def _accept(self, new: list[int]) -> None:
        self.context.extend(new)
        self._rollback(len(self.context) - 1)

    def _rollback(self, valid: int) -> None:
        """Caches keep at most the first `valid` context tokens (rejected drafts go)."""
        valid = max(valid, 0)
        self.cache.crop(min(self.cache.length, valid))
        if self.drafter is not None:
            self.drafter.rollback(valid)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _cut_at_stop(tokens: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:i + 1], True
    return tokens, False
