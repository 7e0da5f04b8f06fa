"""Chain lengths from the measured acceptance per depth and the draft's confidence
(speculate/acceptance.py, speculate/chain_policy.py), on simulated chains: pure, no model."""
import random

import pytest

from specdec.speculate.acceptance import ChainAcceptance, HitRates
from specdec.speculate.chain_policy import DraftLengthPolicy, best_draft_length

RISING = (0.6, 0.8, 0.9, 0.95)  # P(taken | the drafts before it were), by depth; then 0.95


def rising(depth: int) -> float:
    return RISING[min(depth, len(RISING)) - 1]


def simulate(policy: DraftLengthPolicy, passes: int, accept, confidence, seed: int = 0) -> list[int]:
    """Passes of a chain whose draft token at depth d has confidence `confidence(rng)` and is
    taken with probability `accept(d, conf)`; returns the lengths drafted."""
    rng, lengths = random.Random(seed), []
    for _ in range(passes):
        confs, taken = [], None
        while policy.k > 0:
            confs.append(confidence(rng))
            if taken is None and rng.random() >= accept(len(confs), confs[-1]):
                taken = len(confs) - 1
            if not policy.keep_drafting(confs, policy.k_max):
                break
        n = len(confs) if taken is None else taken
        policy.update(len(confs), n, 1.0 + 0.002 * (len(confs) + 1), 0.05, confidences=confs)
        lengths.append(len(confs))
    return lengths


def test_rates_are_measured_per_depth_and_rise_where_acceptance_rises():
    policy = DraftLengthPolicy()
    simulate(policy, 400, lambda d, c: rising(d), lambda rng: 0.5)
    est = [policy.model.at_depth(d) for d in (1, 2, 3, 5)]
    assert est == sorted(est) and abs(est[0] - 0.6) < 0.15 and est[-1] > 0.85, est
    # One rate for all depths (the overall one) would plan a shorter chain.
    one_rate = best_draft_length(policy.acceptance, lambda n: 1.0 + 0.002 * n, 0.05, 0, policy.k_max)
    assert policy.k > one_rate, (policy.k, one_rate)


def test_the_chain_stops_where_the_draft_is_unsure_and_runs_on_where_it_is_sure():
    """Tokens the draft gives >= 0.9 are always taken, those it gives < 0.3 never: the chain
    learns to stop right after an unsure token and to run long on sure ones."""
    policy = DraftLengthPolicy()

    def accept(depth, conf):
        return 1.0 if conf >= 0.9 else 0.0 if conf < 0.3 else 0.5
    simulate(policy, 300, accept, lambda rng: rng.choice((0.1, 0.5, 0.95, 0.97)))
    assert not policy.keep_drafting([0.95, 0.1], policy.k_max)
    assert policy.keep_drafting([0.95, 0.97, 0.95, 0.96, 0.95, 0.97], policy.k_max)
    assert not policy.keep_drafting([0.95] * 5, 5)  # never past the limit
    assert DraftLengthPolicy(k=3).keep_drafting([0.01, 0.01], 3)  # a fixed k drafts k


def test_unmeasured_keys_start_at_the_general_rate_and_forgetting_follows_the_text():
    rates = HitRates(decay=0.9)
    for _ in range(50):
        rates.observe(("all",), True)
    assert rates.rate([("all",), ("depth", 7)], 0.5) == rates.rate([("all",)], 0.5) > 0.9  # depth 7 unseen
    model = ChainAcceptance(decay=0.9)
    for _ in range(40):
        model.observe(4, 4, [0.9] * 4)
    high = model.at_depth(2)
    for _ in range(40):
        model.observe(4, 0, [0.9] * 4)  # the text changed: nothing is taken any more
    assert high > 0.9 and model.at_depth(1) < 0.1 and model.drafted(1, 0.9) < 0.1


def test_the_tree_scores_a_proposal_by_rank_draft_probability_and_depth():
    """The target takes the draft's favourite when the draft gives it >= 0.9 and refuses it
    when the draft gives it < 0.3: the tree's estimate for a rank-0 proposal follows."""
    from specdec.speculate.tree_model import DraftTree, TreeCostModel

    cost = TreeCostModel(width=2)
    for sure in [True, False] * 40:
        tree = DraftTree()
        tree.add(5, parent=-1, rank=0, cum_logp=0.0, confidence=0.95 if sure else 0.2)
        tree.add(6, parent=-1, rank=1, cum_logp=0.0, confidence=0.02)
        cost.observe_walk(tree, [0] if sure else [], 9)  # taken when sure, else the target's 9
    assert cost.hit_logp(0, 1, 0.95) > -0.1 > cost.rank_logp(0) > cost.hit_logp(0, 1, 0.2)
    assert cost.hit_logp(0, 3, 0.95) == cost.hit_logp(0, 4, 0.97)  # deep, same bin: shrunk alike
    assert cost.hit_logp(1, 1, None) == cost.rank_logp(1)  # no draft probability: by rank alone


def test_one_more_draft_pays_when_its_expected_gain_beats_the_long_run_rate():
    from specdec.speculate.chain_policy import more_pays

    def flat(a):
        return lambda depth: a

    def cost(m):  # a draft token and a verified position: 0.05 + 0.002 of a pass each
        return 0.052 * m
    # 1.6 tokens per pass-second on average: a draft must bring > 0.083 expected tokens.
    assert more_pays(0.9, flat(0.8), 2, 16, 1.6, cost)       # sure so far: run on
    assert not more_pays(0.05, flat(0.8), 2, 16, 1.6, cost)  # unsure: stop
    # Acceptance that rises with depth makes a draft worth it that the first depth's rate
    # would not.
    assert not more_pays(0.12, flat(0.6), 1, 16, 1.6, cost)
    assert more_pays(0.12, lambda d: 0.6 if d == 1 else 0.9, 1, 16, 1.6, cost)
    assert not more_pays(0.9, flat(0.8), 3, 3, 1.6, cost)    # never past the limit
    # The dearer a draft token against a pass, the sooner the chain stops.
    assert more_pays(0.2, flat(0.6), 1, 16, 1.6, cost)
    assert not more_pays(0.2, flat(0.6), 1, 16, 1.6, lambda m: 0.152 * m)


def test_long_run_rate_is_recent_tokens_over_recent_seconds():
    from specdec.speculate.chain_policy import LongRunRate

    rate = LongRunRate(memory=0.5)
    assert rate.value(lambda: 1.25) == 1.25  # nothing measured: the model's estimate
    rate.observe(1, 1.0)
    rate.observe(3, 1.0)
    assert rate.value(lambda: 0.0) == (0.5 * 1 + 3) / (0.5 * 1 + 1)


def test_calibration_moves_a_confidence_bin_and_leaves_the_others_near_the_overall_rate():
    model = ChainAcceptance(decay=0.98)
    for _ in range(30):
        model.observe(2, 1, [0.97, 0.2])  # sure tokens taken, unsure ones refused
    assert model.drafted(1, 0.97) > 0.9 and model.drafted(2, 0.2) < 0.1
    unseen = model.drafted(1, 0.6)  # a bin never seen: the overall rate
    assert abs(unseen - model.overall) < 1e-9


def test_cheap_draft_tokens_make_longer_chains_on_the_same_text():
    def accept(depth, conf):
        return conf

    def mean_length(draft_seconds):
        policy = DraftLengthPolicy()
        rng, lengths = random.Random(1), []
        for _ in range(300):
            confs, taken = [], None
            while policy.k > 0:
                confs.append(rng.choice((0.2, 0.6, 0.9, 0.97)))
                if taken is None and rng.random() >= accept(len(confs), confs[-1]):
                    taken = len(confs) - 1
                if not policy.keep_drafting(confs, policy.k_max):
                    break
            n = len(confs) if taken is None else taken
            policy.update(len(confs), n, 1.0 + 0.002 * (len(confs) + 1), draft_seconds, confidences=confs)
            lengths.append(len(confs))
        return sum(lengths[100:]) / 200
    assert mean_length(0.05) > mean_length(0.15) + 0.3


def first_chain(policy: DraftLengthPolicy, confidence: float = 0.9, limit: int = 15) -> int:
    """The length of a fresh policy's first chain (no pass measured yet) of sure tokens."""
    confs = [confidence]
    while policy.keep_drafting(confs, limit):
        confs.append(confidence)
    return len(confs)


def test_the_first_chain_prices_the_draft_before_it_is_measured(monkeypatch):
    """Before any draft token is timed a draft token costs a prior share of a one-token pass
    (chain_policy.DRAFT_COST_PRIOR), so the first chain is a cautious length, not one run
    toward the limit as if drafting were free; the first measured cost replaces the prior."""
    from specdec.speculate import chain_policy

    flat = lambda n: 0.3 + 1e-4 * n  # noqa: E731 - a streamed pass: flat in the tokens
    for policy in (DraftLengthPolicy(), DraftLengthPolicy(profile=flat)):
        assert 2 <= first_chain(policy) <= 3 and policy.k >= 1
        assert policy.draft_seconds == pytest.approx(0.1 * policy.pass_time.seconds(1))
    assert DraftLengthPolicy(profile=flat).k <= 3  # the first pass's plan: the prior's best
    policy = DraftLengthPolicy(profile=flat)
    policy.update(1, 1, 0.3, 0.0)  # no draft token timed yet: the prior stays
    assert policy.draft_seconds == pytest.approx(0.1 * policy.pass_time.seconds(1))
    policy.update(1, 1, 0.3, 0.001)  # measured: cheap drafts, longer chains
    assert policy.draft_seconds == 0.001 and first_chain(policy) > 3
    monkeypatch.setattr(chain_policy, "DRAFT_COST_PRIOR", 0.0)  # drafting assumed free
    assert first_chain(DraftLengthPolicy(profile=flat)) >= 10 and first_chain(DraftLengthPolicy()) >= 6
