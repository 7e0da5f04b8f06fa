"""Shared by the tests that check sampled output against an exact distribution: the target's
P(t1, t2 | PROMPT16) on a 16-token vocabulary, the sampling loop, and chi-square p-values
with rare categories pooled."""
import torch
from scipy.stats import chisquare

import specdec

PROMPT16 = [3, 7, 1, 12, 5]  # for the 16-token vocabulary
VOCAB16 = 16


def exact_two_token_distribution(path, params, process=None, prompt=PROMPT16) -> torch.Tensor:
    """P(t1, t2 | prompt) [256] from the target's own probabilities (float32). `process`
    (logits, history ids) -> logits runs before `params` (e.g. a reference logits processor)."""
    from specdec.sampling import probs_from_logits

    model = specdec.load(path, dtype="float32").target.model
    cache = model.new_cache(32)

    def probs(new: list[int], history: list[int]) -> torch.Tensor:
        logits = model.forward(torch.tensor(new), cache.next_positions(len(new)), cache)[-1]
        return probs_from_logits(process(logits, history) if process else logits, params)

    p1 = probs(list(prompt), list(prompt))
    joint = torch.zeros(p1.numel(), p1.numel())
    for t1 in range(p1.numel()):
        if p1[t1] == 0:
            continue
        cache.crop(len(prompt))
        joint[t1] = p1[t1] * probs([t1], list(prompt) + [t1])
    return joint.flatten()


def sample_two_tokens(lm, n: int, max_new_tokens: int = 2, prompt=PROMPT16, **sampling
                      ) -> tuple[torch.Tensor, dict]:
    """Counts [256] of (t1, t2) over seeds 0..n-1, and the runs' summed stats: accepted,
    drafted, and every strategy counter."""
    counts = torch.zeros(VOCAB16 * VOCAB16)
    totals = {"accepted": 0, "drafted": 0}
    for seed in range(n):
        out = lm.generate(list(prompt), max_new_tokens=max_new_tokens, seed=seed, **sampling)
        counts[out.token_ids[0] * VOCAB16 + out.token_ids[1]] += 1
        totals["accepted"] += out.stats.accepted
        totals["drafted"] += out.stats.drafted
        for key, value in out.stats.counters.items():
            totals[key] = totals.get(key, 0) + value
    return counts, totals


def pvalue(counts: torch.Tensor, probs: torch.Tensor, minimum: float = 5.0) -> float:
    """Chi-square p-value of `counts` under `probs`, categories expecting < `minimum` pooled
    (chi-square validity). A count where `probs` has no mass fails the test outright."""
    observed, expected = _pooled(counts, probs, minimum)
    if expected[-1] == 0:
        assert observed[-1] == 0, "a token with zero target probability was emitted"
        observed, expected = observed[:-1], expected[:-1]
    return _chisquare(observed, expected)


def pvalue_against(counts: torch.Tensor, probs: torch.Tensor, minimum: float = 5.0) -> float:
    """As `pvalue`, for a distribution the counts should NOT follow (power checks): 0 when
    counts land where it has no mass."""
    observed, expected = _pooled(counts, probs, minimum)
    if expected[-1] == 0:
        if observed[-1] > 0:
            return 0.0
        observed, expected = observed[:-1], expected[:-1]
    return _chisquare(observed, expected)


def _pooled(counts, probs, minimum):
    expected = probs.double() * counts.sum()
    big = expected >= minimum
    observed = torch.cat([counts[big], counts[~big].sum().reshape(1)]).double()
    expected = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    return observed, expected


def _chisquare(observed, expected) -> float:
    expected = expected * (observed.sum() / expected.sum())
    return float(chisquare(observed.numpy(), expected.numpy(), sum_check=False).pvalue)
