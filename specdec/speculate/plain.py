"""Plain decoding: one token per target pass, no draft."""
from __future__ import annotations

import torch

from ..penalty import penalize
from ..sampling import probs_from_logits
from ..verify import accept_greedy, accept_sampled
from .base import Outcome, Plan, Step, Strategy

NO_DRAFTS = torch.zeros(0, dtype=torch.long)


class Plain(Strategy):
    name = "plain"

    def plan(self, step: Step) -> Plan:
        feed = torch.tensor(step.uncached, dtype=torch.long)
        return Plan(feed, step.cache.next_positions(feed.numel()), num_logits=1)

    def commit(self, step: Step, plan: Plan, logits: torch.Tensor, pass_seconds: float) -> Outcome:
        # The acceptance rules with no drafts: argmax, or one sample from the target.
        logits = penalize(logits, step.params, step.context)
        if step.params.greedy:
            _, nxt = accept_greedy(NO_DRAFTS, logits)
        else:
            _, nxt = accept_sampled(NO_DRAFTS, None, probs_from_logits(logits, step.params), step.generator)
        return Outcome([nxt])

    def describe(self) -> str:
        return "plain decoding"
