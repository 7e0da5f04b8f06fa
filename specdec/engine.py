"""The decoding loop: plan -> one target pass -> commit -> emit.

State is the token context plus the target's KV cache. The target cache always holds the
context minus its last token (the "pending" token, fed at the start of the next pass).
What a pass feeds beyond the uncached context, and how its logits turn into accepted
tokens, is the strategy's business (specdec.speculate: plain, chain, tree); the engine
keeps the loop, the stop rules and the stats. Work a plan wants done while the target waits
for its weights (Plan.idle) goes to the target's forward as it is. A new prompt that shares a prefix with the
context (the next chat turn) reuses the caches up to the shared prefix.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .model import Transformer
from .moe_stats import add_counters, counter_delta, expert_figures
from .sampling import SamplingParams
from .speculate.base import Step, Strategy, common_prefix


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
    # Per draft position i (0 = the first drafted token of a pass, a tree's depth 1): passes
    # that offered a token there (the walk reached it and a draft was there), and that took it.
    position_offered: list[int] = field(default_factory=list)
    position_taken: list[int] = field(default_factory=list)
    draft_seconds: float = 0.0  # in the strategy's plan: drafting on the critical path
    counters: dict[str, float] = field(default_factory=dict)  # a strategy's own (Outcome.counters)
    source: dict[str, float] = field(default_factory=dict)  # the weight source's counters, summed per pass

    @property
    def experts(self) -> dict[str, float]:
        """A mixture-of-experts target's figures (specdec/moe_stats.py); {} otherwise."""
        return expert_figures(self.source, self.target_passes, self.new_tokens)

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
    def position_acceptance(self) -> list[float]:
        """P(the target takes the drafted token at position i | the walk reached it)."""
        return [t / o for t, o in zip(self.position_taken, self.position_offered) if o]

    @property
    def draft_ms_per_pass(self) -> float:
        return self.draft_seconds / self.target_passes * 1e3 if self.target_passes else 0.0

    def count_positions(self, accepted: int, rejected: bool) -> None:
        reached = accepted + bool(rejected)
        grow = reached - len(self.position_offered)
        if grow > 0:
            self.position_offered += [0] * grow
            self.position_taken += [0] * grow
        for i in range(reached):
            self.position_offered[i] += 1
            self.position_taken[i] += i < accepted

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
                "k": round(mean_k, 3), "stop_reason": self.stop_reason,
                "draft_ms_per_pass": round(self.draft_ms_per_pass, 3),
                "position_acceptance": [round(a, 4) for a in self.position_acceptance],
                **{k: round(v, 4) for k, v in self.counters.items()},
                **{k: round(v, 4) for k, v in self.experts.items()}}


class Engine:
    def __init__(self, target: Transformer, strategy: Strategy, max_context: int,
                 bytes_read: Callable[[], int] = lambda: 0,
                 source_counters: Callable[[], dict[str, float]] = dict,
                 observe_pass: Callable[[int, dict[str, float]], None] | None = None):
        """`bytes_read`, `source_counters`: the weight source's cumulative bytes read and
        other counters (e.g. StreamStats.expert_counters); each pass adds their change.
        `observe_pass(tokens, change of the counters)` learns from each pass before the
        strategy commits it (e.g. specdec/moe_pass_cost.py)."""
        self.target = target
        self.strategy = strategy
        self.cache = target.new_cache(max_context)
        self.max_context = max_context
        self.bytes_read = bytes_read
        self.source_counters = source_counters
        self.observe_pass = observe_pass
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
                new = self._pass(Step(self.context, self.cache, room, params, generator), stats)
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
        shared = common_prefix(self.context, prompt)
        self.context = list(prompt)
        self._rollback(min(shared, len(prompt) - 1))
        return len(prompt) - self.cache.length

    def _pass(self, step: Step, stats: GenerationStats) -> list[int]:
        planned = time.perf_counter()
        plan = self.strategy.plan(step)
        stats.draft_seconds += time.perf_counter() - planned
        self.strategy.pass_started(step, plan)
        try:
            started, read_before, counted = time.perf_counter(), self.bytes_read(), self.source_counters()
            logits = self.target.forward(plan.tokens, plan.positions, self.cache, mask=plan.mask,
                                         num_logits=plan.num_logits, idle=plan.idle)
            pass_seconds = time.perf_counter() - started
            stats.bytes_read += self.bytes_read() - read_before
            counted = counter_delta(counted, self.source_counters())
            add_counters(stats.source, counted)
            if self.observe_pass is not None:
                self.observe_pass(plan.tokens.numel(), counted)
        finally:  # work started beside the pass is collected even when the pass fails
            self.strategy.pass_ended(step, plan)
        out = self.strategy.commit(step, plan, logits, pass_seconds)
        stats.target_passes += 1
        stats.drafted += out.drafted
        stats.accepted += out.accepted
        stats.rejected += out.rejected
        stats.count_positions(out.accepted, out.rejected)
        if out.size is not None:
            stats.k_used.append(out.size)
        for key, value in out.counters.items():
            stats.counters[key] = stats.counters.get(key, 0) + value
        return out.tokens

    def _accept(self, new: list[int]) -> None:
        self.context.extend(new)
        self._rollback(len(self.context) - 1)

    def _rollback(self, valid: int) -> None:
        """Caches keep at most the first `valid` context tokens (rejected drafts go)."""
        valid = max(valid, 0)
        self.cache.crop(min(self.cache.length, valid))
        self.strategy.rollback(valid)



def _cut_at_stop(tokens: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:i + 1], True
    return tokens, False
