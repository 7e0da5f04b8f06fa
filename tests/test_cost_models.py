"""The chain's DraftLengthPolicy and the tree's TreeCostModel on pass-time curves like a
streamed bf16 target's (flat: the read dominates) and a q4 target's (t(n) = read + compute(n):
the int4 kernel is compute-bound from ~16 tokens). Both must learn the slope from the passes
they see and pick sizes whose true rate is close to the best one."""
from __future__ import annotations

import heapq
import math
import random

import pytest

from specdec.speculate.chain import DraftLengthPolicy
from specdec.speculate.tree_model import DraftTree, TreeCostModel

T_DRAFT = 0.01


def q4_curve(n: int) -> float:
    """7B-shape q4: ~1.2 s to read 3.9 GB, then ~20 ms of int4 compute per verified token."""
    return 1.2 + 0.02 * n


def bf16_curve(n: int) -> float:
    """7B-shape bf16: 4.2 s read; compute hides behind it up to 64+ tokens."""
    return 4.2 + 0.0005 * n


def chain_rate(k: int, a: float, curve) -> float:
    return (1 - a ** (k + 1)) / (1 - a) / (curve(k + 1) + k * T_DRAFT)


def simulate_chain(curve, a: float, passes: int = 80, seed: int = 0) -> DraftLengthPolicy:
    rng = random.Random(seed)
    policy = DraftLengthPolicy()
    for _ in range(passes):
        k = policy.k
        accepted = 0
        while accepted < k and rng.random() < a:
            accepted += 1
        policy.update(k, accepted, curve(k + 1), T_DRAFT, tokens=k + 1)
    return policy


def test_chain_learns_the_q4_slope_and_drafts_less_than_on_bf16():
    a = 0.8
    q4, bf16 = simulate_chain(q4_curve, a), simulate_chain(bf16_curve, a)
    for policy, curve in ((q4, q4_curve), (bf16, bf16_curve)):
        est = policy.acceptance
        best = max(chain_rate(k, est, curve) for k in range(1, policy.k_max + 1))
        assert chain_rate(policy.k, est, curve) >= 0.97 * best, (policy.k, est)
        a0, b = policy.pass_time.fit()
        # Right where it decides (a chain that settles on one length learns no slope, and
        # needs none there) ...
        n = policy.k + 1
        assert math.isclose(a0 + b * n, curve(n), rel_tol=0.02)
    a0, b = q4.pass_time.fit()  # ... and the q4 slope, from the lengths it tried
    assert math.isclose(a0 + b * 9, q4_curve(9), rel_tol=0.02)
    assert q4.k < bf16.k  # a compute-bound pass makes long chains dear


def test_chain_with_a_flat_pass_time_keeps_its_old_choices():
    policy = DraftLengthPolicy()
    assert policy.best_k(0.9, t_target=1.0, t_draft=0.01) >= 10
    assert policy.best_k(0.7, t_target=q4_curve, t_draft=0.01) < policy.best_k(0.7, 1.0, 0.01)


def best_first_tree(nodes: int = 64, width: int = 4, hit: float = 0.7) -> DraftTree:
    """A tree grown best-first, as the builder grows one: rank r is the target's token with
    probability hit * (1 - hit)^r, a node's reach is the product along its path."""
    tree, heap, order = DraftTree(), [], 0

    def offer(parent: int, logp: float) -> None:
        nonlocal order
        for rank in range(width):
            heapq.heappush(heap, (-(logp + math.log(hit * (1 - hit) ** rank)), order, parent, rank))
            order += 1

    offer(-1, 0.0)
    while len(tree) < nodes:
        neg, _, parent, rank = heapq.heappop(heap)
        node = tree.add(len(tree), parent=parent, rank=rank, cum_logp=-neg)
        offer(node, -neg)
    return tree


def tree_rate(tree: DraftTree, n: int, curve) -> float:
    return (1 + tree.expected_accepted(n)) / (curve(1 + n) + 3 * T_DRAFT)


def fitted_choice(cost: TreeCostModel, tree: DraftTree) -> int:
    return max(range(1, len(tree) + 1), key=lambda n: cost.rate(tree, n, 1, 3))


def test_tree_cost_model_learns_the_q4_slope_and_sizes_trees_by_it():
    tree = best_first_tree()
    chosen = {}
    for name, curve in (("q4", q4_curve), ("bf16", bf16_curve)):
        cost = TreeCostModel(width=4)
        cost.observe_draft(T_DRAFT)
        for n in (20, 33, 12, 41, 27, 18, 36, 25):  # sizes a builder would pick, varied
            cost.observe_pass(n, curve(n))
        for n in (1, 16, 64):
            assert math.isclose(cost.pass_seconds(n), curve(n), rel_tol=0.01)
        n = fitted_choice(cost, tree)
        best = max(tree_rate(tree, m, curve) for m in range(1, len(tree) + 1))
        assert tree_rate(tree, n, curve) >= 0.98 * best
        chosen[name] = n
    assert chosen["q4"] < chosen["bf16"], chosen


def test_the_probe_profile_sizes_the_first_passes_before_two_sizes_are_seen():
    """With the probe's matmul curve c(n), one measured size is enough to size the chain: tokens
    are free until c(n) outgrows the measured pass (read and matmuls overlap), then cost c(n)."""
    from specdec.speculate.pass_time import PassTimeFit

    fit = PassTimeFit(profile=lambda n: 0.3 * n)  # a compute-bound kernel: 0.3 s per token
    fit.observe(1, 1.2)  # a streamed pass of one token: the read, 1.2 s
    assert fit.seconds(1) == 1.2 and fit.seconds(4) == 1.2  # hidden behind the read
    assert fit.seconds(10) == 3.0  # the matmuls dominate
    policy = DraftLengthPolicy(profile=lambda n: 0.3 * n)
    policy.update(0, 0, 1.2, T_DRAFT, tokens=1)
    assert 1 <= policy.k <= 4  # drafts up to what the read hides, not k_max
    fit.observe(5, 1.6)  # a second size: the least-squares fit on c(n) takes over
    a, b = fit.fit()
    assert a + b * 0.3 == pytest.approx(1.2) and a + b * 1.5 == pytest.approx(1.6)


def streamed_q4_curve(n: int) -> float:
    """A 13B-shape q4 pass streamed from disk: the 2.2 s read hides the int4 matmuls (100 ms a
    token) until they outgrow it, past 22 tokens; a prompt's first pass is compute-bound."""
    return max(2.2, 0.1 * n) + 0.02


def test_the_tree_prices_decode_passes_by_decode_passes_not_the_prompts_first_pass():
    """A streamed pass is flat, then grows: fitted where the builder asks (a decode pass's
    few tokens), not through every pass, and never below the probe's matmul time, a 17-token
    pass costs what it does and the tree grows to the size that pays. A line through every
    pass, the prompts' compute-bound first passes included, priced it 30% high and grew a
    third of that tree (the seed-13b tree of 2026-12-07, docs/benchmarks.md)."""
    probe = lambda n: 0.1 * n  # the probe's matmul seconds at n tokens  # noqa: E731
    cost = TreeCostModel(width=4, profile=probe)
    cost.observe_draft(T_DRAFT)
    for n in (60, 5, 9, 3, 12, 6, 17, 4, 60, 8, 2, 10, 5, 14, 7):  # two prompts' first passes
        cost.observe_pass(n, streamed_q4_curve(n))
    assert cost.pass_time.measured(1) and cost.pass_time.measured(60)
    for n in (1, 9, 17, 60):  # (between 17 and 60 the nearest passes include the first ones: dearer)
        assert cost.pass_seconds(n) == pytest.approx(streamed_q4_curve(n), rel=0.05), n
    for hit in (0.35, 0.5):  # the demo draft's and a better one's
        tree = best_first_tree(hit=hit)
        n = max(range(1, 33), key=lambda m: cost.rate(tree, m, 1, 3))
        best = max(tree_rate(tree, m, streamed_q4_curve) for m in range(1, 33))
        assert tree_rate(tree, n, streamed_q4_curve) >= 0.98 * best, (hit, n)


def test_a_plain_pass_price_is_measured_only_once_a_pass_near_one_token_is():
    """What the tree's gate is told (speculate/gate.py): after a prompt's first pass and one
    decode tree, a one-token pass is priced from other sizes (here below the read it must
    wait for), and the fit says so."""
    from specdec.speculate.pass_time import PassTimeFit

    fit = PassTimeFit(profile=lambda n: 0.1 * n)
    fit.observe(56, streamed_q4_curve(56))  # the prompt: compute-bound
    fit.observe(29, streamed_q4_curve(29))  # a 28-node tree
    assert not fit.measured(1) and fit.seconds(1) < 0.5 * streamed_q4_curve(1)
    fit.observe(1, streamed_q4_curve(1))
    assert fit.measured(1) and fit.measured(6) and not fit.measured(7)


def test_past_the_largest_pass_measured_the_read_hides_the_matmuls_until_measured_otherwise():
    """Small streamed passes on a drifting disk (+-0.3 s) rise with their size by chance: a line
    through them must not price larger passes by that slope (at seed-13b it priced 16 tokens
    0.6 s over 8, and trees stayed at ~4 nodes, never measuring more). Past the largest pass
    measured, a pass costs that one's price until the probe's matmuls outgrow it; once larger
    passes are measured, what they cost prices them."""
    from specdec.speculate.pass_time import PassTimeFit

    fit = PassTimeFit(profile=lambda n: 0.1 * n)  # the read (2.2 s) hides 22 tokens of matmuls
    for n, y in ((2, 2.2), (3, 2.3), (4, 2.5), (5, 2.4), (6, 2.6), (7, 2.7)):
        fit.observe(n, y)
    assert fit.seconds(5) == pytest.approx(2.46, abs=0.05)  # the line, where it was measured
    assert fit.seconds(16) <= 2.7 and fit.seconds(40) == pytest.approx(4.0)
    for n, y in ((12, 3.5), (14, 3.7), (16, 3.9)):  # larger passes turn out dear after all
        fit.observe(n, y)
    assert fit.seconds(15) == pytest.approx(3.8, abs=0.1)
