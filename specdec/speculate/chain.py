"""Chain speculation: the draft proposes k tokens in a row, the target checks them in one
pass (rejection sampling, specdec.verify), and k is chosen per pass by DraftLengthPolicy."""
from __future__ import annotations

import time

import torch

from ..draft import Drafter
from ..penalty import penalize
from ..sampling import SamplingParams, probs_from_logits, sample
from ..verify import accept_greedy, accept_sampled
from .backoff import Backoff
from .base import Outcome, Plan, Step, Strategy
from .ema import Ema
from .pass_time import PassTimeFit


class Chain(Strategy):
    name = "chain"

    def __init__(self, drafter: Drafter, policy: "DraftLengthPolicy"):
        self.drafter = drafter
        self.policy = policy
        self.draft_seconds = Ema()  # one draft token: a one-token forward + the pick

    def plan(self, step: Step) -> Plan:
        k = min(self.policy.k, step.room - 1)
        drafts, q = torch.zeros(0, dtype=torch.long), None
        if k > 0:
            drafts, q = self.propose(step.context, k, step.params, step.generator)
        uncached = step.uncached
        feed = torch.cat([torch.tensor(uncached, dtype=torch.long), drafts])
        return Plan(feed, step.cache.next_positions(feed.numel()), num_logits=k + 1,
                    state=(drafts, q, len(uncached)))

    def commit(self, step: Step, plan: Plan, logits: torch.Tensor, pass_seconds: float) -> Outcome:
        drafts, q, n_uncached = plan.state
        k = drafts.numel()
        # Row i follows the context and the first i drafts: its penalty counts those.
        drafted = drafts.tolist()
        logits = penalize(logits, step.params, step.context, [drafted[:i] for i in range(k + 1)])
        if step.params.greedy:
            n, nxt = accept_greedy(drafts, logits)
        else:
            n, nxt = accept_sampled(drafts, q, probs_from_logits(logits, step.params), step.generator)
        if n_uncached == 1:  # a prefill pass would distort the pass-time estimate
            self.policy.update(k, n, pass_seconds, self.draft_seconds.value, tokens=k + 1)
        return Outcome(drafts[:n].tolist() + [nxt], drafted=k, accepted=n, rejected=n < k,
                       size=k if k > 0 else None)

    def rollback(self, valid: int) -> None:
        self.drafter.keep(valid)

    def propose(self, context: list[int], k: int, params: SamplingParams,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draft k tokens after `context`: (tokens [k], q [k, target vocab] or None if greedy).
        The draft first catches up on context tokens it has not seen (a new prompt, or the
        target's token after a pass), so its cache always ends one behind the drafts."""
        fed = len(context) - self.drafter.cache.length
        started = time.perf_counter()
        logits = self.drafter.catch_up(context)
        # A draft token costs one forward plus picking from its logits. The catch-up
        # forward counts when it is a decode step (1-2 tokens), not a prompt prefill.
        timed = fed <= 2
        tokens, dists = [], []
        for i in range(k):
            logits = penalize(self.drafter.align(logits), params, context, [tokens])
            if params.greedy:
                tokens.append(int(logits.argmax()))
            else:
                dist = probs_from_logits(logits, params)
                dists.append(dist)
                tokens.append(int(sample(dist, generator)))
            if timed:
                self.draft_seconds.update(time.perf_counter() - started)
            if i < k - 1:
                started, timed = time.perf_counter(), True
                logits = self.drafter.forward(torch.tensor(tokens[-1:]))[-1]
        q = torch.stack(dists) if dists else None
        return torch.tensor(tokens, dtype=torch.long), q

    def describe(self) -> str:
        return f"chain speculation, k {'adaptive' if self.policy.fixed is None else self.policy.fixed}"

    def timings(self) -> dict[str, float]:
        return {"draft_ms_per_token": self.draft_seconds.value * 1e3}


class DraftLengthPolicy:
    """Chooses k to maximise expected tokens per second, k = 0 (plain decoding) included.

    With per-token acceptance a, a pass with k drafts yields E(k) = (1 - a^(k+1)) / (1 - a)
    tokens and costs T_target(k + 1) + k * T_draft. We estimate a from (accepted, rejected)
    counts with exponential forgetting, T_target(n) from measured passes on top of the probe's
    kernel curve for this CPU (speculate/pass_time.py: on q4 weights, or bf16 without bf16
    instructions, the matmuls grow with the tokens and long chains get dear) and T_draft from
    measured times (EMA), and pick the k in [0, k_max] with the best E(k) / cost. When k = 0
    wins, drafting does not pay on this machine at this acceptance: the chain decodes plainly
    (never slower than plain) and drafts one pass in every `recheck_every` to look again
    (speculate/backoff.py), since acceptance and costs move. A fixed k skips all this.
    """

    def __init__(self, k: int | None = None, k_max: int = 16, k_start: int = 4, decay: float = 0.9,
                 profile=None, recheck_every: int = 8):
        if k is not None and not (isinstance(k, int) and k >= 0):
            raise ValueError(f"k must be an integer >= 0 (0 = plain decoding), got {k!r}")
        self.fixed = k
        self.k_max = k_max
        self.decay = decay
        self.accepted = 1.0  # weak prior: a = 0.5
        self.rejected = 1.0
        self.pass_time = PassTimeFit(profile=profile)
        self.backoff = Backoff(recheck_every)
        self.k = k if k is not None else k_start
        if k is None and profile is not None:
            # First passes sized by this CPU's kernel curve (draft cost unknown yet: 0).
            self.k = max(1, self.best_k(self.acceptance, self.pass_time.seconds, 0.0))

    @property
    def acceptance(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    @property
    def target_seconds(self) -> float:
        """Estimated seconds of a pass at the current k."""
        return self.pass_time.seconds(self.k + 1)

    def update(self, drafted: int, accepted: int, target_seconds: float, draft_seconds: float,
               tokens: int | None = None) -> int:
        """Record a pass that verified `tokens` (default drafted + 1) in `target_seconds`."""
        if drafted:
            self.accepted = self.decay * self.accepted + accepted
            self.rejected = self.decay * self.rejected + (1 if accepted < drafted else 0)
        self.pass_time.observe(drafted + 1 if tokens is None else tokens, target_seconds)
        if self.fixed is None:
            self.k = self._next_k(draft_seconds)
        return self.k

    def _next_k(self, draft_seconds: float) -> int:
        best = self.best_k(self.acceptance, self.pass_time.seconds, draft_seconds)
        if not self.backoff.draft(best > 0):
            return 0
        if best > 0:
            return best
        # Look again: one drafted pass.
        return max(1, self.best_k(self.acceptance, self.pass_time.seconds, draft_seconds, k_min=1))

    def best_k(self, a: float, t_target, t_draft: float, k_min: int = 0) -> int:
        """t_target: seconds of a pass, a number (the same for every k) or a function of the
        tokens it verifies (k + 1). k = 0 is plain decoding (no draft cost)."""
        return best_draft_length(a, t_target, t_draft, k_min, self.k_max)


def best_draft_length(a: float, t_target, t_draft: float, k_min: int, k_max: int) -> int:
    """The k in [k_min, k_max] with the most expected tokens per second for per-token
    acceptance `a`: E(k) = (1 - a^(k+1)) / (1 - a) tokens for a pass verifying k + 1 tokens
    in t_target(k + 1) seconds (or a number: the same for every k) plus k * t_draft."""
    a = min(a, 0.999)
    pass_seconds = t_target if callable(t_target) else (lambda n: t_target)

    def rate(k):
        return (1 - a ** (k + 1)) / (1 - a) / (pass_seconds(k + 1) + k * t_draft + 1e-9)
    return max(range(k_min, k_max + 1), key=rate)
