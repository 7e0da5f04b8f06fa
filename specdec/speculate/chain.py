"""Chain speculation: the draft proposes tokens in a row, the target checks them in one pass
(rejection sampling, specdec.verify). How many is decided per pass and per drafted token by
DraftLengthPolicy (speculate/chain_policy.py): from the measured acceptance per depth, and
the draft's confidence in each token it drafts."""
from __future__ import annotations

import time

import torch

from ..draft import DECODE_STEP, Drafter
from ..penalty import penalize
from ..sampling import SamplingParams, probs_from_logits, sample
from ..verify import accept_greedy, accept_sampled
from .base import Outcome, Plan, Step, Strategy
from .chain_policy import DraftLengthPolicy
from .ema import Ema


class Chain(Strategy):
    name = "chain"

    def __init__(self, drafter: Drafter, policy: DraftLengthPolicy):
        self.drafter = drafter
        self.policy = policy
        self.draft_seconds = Ema()  # one draft token: a one-token forward + the pick

    def plan(self, step: Step) -> Plan:
        policy = self.policy
        limit = min(policy.k_max if policy.fixed is None else policy.fixed, step.room - 1)
        drafts, q, confidences = torch.zeros(0, dtype=torch.long), None, []
        before = dict(self.drafter.counters)
        if policy.k > 0 and limit > 0:
            drafts, q, confidences = self.propose(step.context, limit, step.params, step.generator)
        uncached = step.uncached
        feed = torch.cat([torch.tensor(uncached, dtype=torch.long), drafts])
        return Plan(feed, step.cache.next_positions(feed.numel()), num_logits=drafts.numel() + 1,
                    state=(drafts, q, confidences, len(uncached), self.drafter.counters_since(before)))

    def commit(self, step: Step, plan: Plan, logits: torch.Tensor, pass_seconds: float) -> Outcome:
        drafts, q, confidences, n_uncached, counters = plan.state
        k = drafts.numel()
        # Row i follows the context and the first i drafts: its penalty counts those.
        drafted = drafts.tolist()
        logits = penalize(logits, step.params, step.context, [drafted[:i] for i in range(k + 1)])
        if step.params.greedy:
            n, nxt = accept_greedy(drafts, logits)
        else:
            n, nxt = accept_sampled(drafts, q, probs_from_logits(logits, step.params), step.generator)
        if n_uncached == 1:  # a prefill pass would distort the pass-time estimate
            self.policy.update(k, n, pass_seconds, self.draft_seconds.value, tokens=k + 1,
                               confidences=confidences)
        return Outcome(drafts[:n].tolist() + [nxt], drafted=k, accepted=n, rejected=n < k,
                       size=k if k > 0 else None, counters=counters)

    def rollback(self, valid: int) -> None:
        self.drafter.keep(valid)

    def propose(self, context: list[int], limit: int, params: SamplingParams,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None, list[float]]:
        """Draft up to `limit` tokens after `context`, as long as the policy says another one
        pays: (tokens [k], q [k, target vocab] or None if greedy, the draft's probability of
        each token). The draft first catches up on context tokens it has not seen (a new
        prompt, or the target's token after a pass), so its cache always ends one behind."""
        fed = len(context) - self.drafter.cache.length
        started = time.perf_counter()
        logits = self.drafter.catch_up(context)
        # A draft token costs one forward plus picking from its logits. The catch-up
        # forward counts when it is a decode step (1-2 tokens), not a prompt prefill.
        timed = fed <= DECODE_STEP
        tokens, dists, confidences = [], [], []
        while True:
            token, dist, confidence = _pick(self.drafter.align(logits), params, context, tokens, generator)
            tokens.append(token)
            confidences.append(confidence)
            if dist is not None:
                dists.append(dist)
            if timed:
                self.draft_seconds.update(time.perf_counter() - started)
            if not self.policy.keep_drafting(confidences, limit):
                break
            started, timed = time.perf_counter(), True
            logits = self.drafter.forward(torch.tensor(tokens[-1:]))[-1]
        q = torch.stack(dists) if dists else None
        return torch.tensor(tokens, dtype=torch.long), q, confidences

    def describe(self) -> str:
        fixed = self.policy.fixed
        return f"chain speculation, k {'adaptive (per-depth acceptance, draft confidence)' if fixed is None else fixed}"

    def timings(self) -> dict[str, float]:
        return {"draft_ms_per_token": self.draft_seconds.value * 1e3}


def _pick(logits: torch.Tensor, params: SamplingParams, context: list[int], drafted: list[int],
          generator: torch.Generator | None) -> tuple[int, torch.Tensor | None, float]:
    """The draft's next token after `drafted`: (token, its distribution q or None when greedy,
    the draft's probability of it: the softmax's when greedy, q's otherwise)."""
    logits = penalize(logits, params, context, [drafted])
    if params.greedy:
        token = int(logits.argmax())
        return token, None, float(torch.softmax(logits.float(), -1)[token])
    dist = probs_from_logits(logits, params)
    token = int(sample(dist, generator))
    return token, dist, float(dist[token])
