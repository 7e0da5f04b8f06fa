"""The interface between the decoding loop and a speculation strategy.

A pass of the loop is: `plan` (the strategy drafts, if it drafts, and says what the
target must process) -> the target's forward over `Plan.tokens` -> `commit` (the strategy
reads the target's logits, decides which tokens are accepted and brings the caches in
line). The engine owns the context, the target cache, the stop rules and the stats; it
never looks inside a plan.

Cache contract. Before `plan`, the target cache holds a prefix of the context, at most
len(context) - 1 entries, and a drafter's cache whatever `rollback` left.
A plan feeds the uncached context tokens (`step.uncached`) first, then anything the
strategy adds. After `commit` returns tokens t_1..t_m, the target cache must hold entries
for the context followed by t_1..t_{m-1} in order (the engine may still crop it, when a
stop token or the token budget cuts the reply). `rollback(valid)` then tells the strategy
that only the first `valid` context tokens are valid in any cache it owns.

State. A strategy object lives as long as the decoder and may keep state across passes
(learned acceptance rates and costs, a tree to reuse). What a pass's `commit` needs from
its `plan` travels in `Plan.state`.

Overlap hooks. `pass_started` / `pass_ended` bracket the target's forward (also one that
raises). A strategy that works while the target's weights stream gives `Plan.idle`: the
engine hands it to the target's forward, whose weights source calls it whenever the next
layer is not read from disk yet (offload/prefetch.py, idle work), on the loop's own thread.
overlap.py grows its draft tree there, one draft forward per call; the next `plan` uses
what it grew. A strategy's own counters (Outcome.counters) are summed into the stats.

Adding a mode: a new module here with a Strategy subclass, and its line in registry.py's
MODES (docs/architecture.md shows one); the loop does not change. A draft
that is a quantized copy of the target is a Drafter over that model, so chain or tree
serve it as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..cache import KVCache
from ..sampling import SamplingParams


@dataclass
class Step:
    """What a strategy may see of the engine for one pass."""
    context: list[int]          # prompt + accepted tokens; do not modify
    cache: KVCache              # the target's cache (a strategy may compact it in commit)
    room: int                   # at most this many tokens may come out of this pass (>= 1)
    params: SamplingParams
    generator: torch.Generator | None

    @property
    def uncached(self) -> list[int]:
        """Context tokens the target has not processed: the start of every feed."""
        return self.context[self.cache.length:]


@dataclass
class Plan:
    """What the target processes in one pass (see Transformer.forward)."""
    tokens: torch.Tensor                # [T] long
    positions: torch.Tensor             # [T] rope positions
    mask: torch.Tensor | None = None    # [T, cache.length + T] bool, None = causal
    num_logits: int = 1                 # rows of logits commit needs (the last ones)
    state: Any = None                   # the strategy's own, handed back to commit
    # Work for the pass's waits on disk: called with the source's estimate of the seconds
    # until the awaited layer is read (or None); returns False when it has nothing worth doing.
    idle: Callable[[float | None], bool] | None = None


@dataclass
class Outcome:
    """What one pass produced."""
    tokens: list[int]          # accepted drafts, then the target's own next token
    drafted: int = 0           # tokens offered to the target for checking
    accepted: int = 0          # of those, taken
    rejected: bool = False     # the pass ended on a draft the target did not take
    size: int | None = None    # the draft size this pass chose, for stats.k_used (None: none chosen)
    counters: dict[str, float] = field(default_factory=dict)  # the strategy's own, summed in stats


class Strategy:
    """Base class: the do-nothing parts of the interface."""

    name = "base"

    def plan(self, step: Step) -> Plan:
        raise NotImplementedError

    def commit(self, step: Step, plan: Plan, logits: torch.Tensor, pass_seconds: float) -> Outcome:
        """`logits` are the target's last `plan.num_logits` rows, `pass_seconds` the time the
        forward took (for the strategy's cost model)."""
        raise NotImplementedError

    def rollback(self, valid: int) -> None:
        """Only the first `valid` context tokens remain valid in the caches the strategy owns."""

    def pass_started(self, step: Step, plan: Plan) -> None:
        """The target's forward over `plan` begins (see the module's overlap hook)."""

    def pass_ended(self, step: Step, plan: Plan) -> None:
        """The target's forward over `plan` has returned, or raised (also called then)."""

    def describe(self) -> str:
        """One line for banners: the mode and its settings."""
        return self.name

    def timings(self) -> dict[str, float]:
        """The strategy's current time estimates, in milliseconds, for reports."""
        return {}


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share (a next prompt vs the cached context)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
