"""Speculation on a mixture-of-experts target knows that a pass of more tokens reads more
experts: the union model learns how correlated the routing is and what the cache holds, the
pass-time fit adds the expert reads' growth, and chains get shorter when that growth is steep."""
import math

import pytest

import specdec
from helpers.family_runs import PROMPT, make_target_and_draft
from helpers.moe_budget import minimum_ram
from offload.pack import pack
from specdec.moe_pass_cost import DEFAULT_SECONDS_PER_BYTE, ExpertPassCost
from specdec.moe_routing import independent_union
from specdec.speculate.chain_policy import DraftLengthPolicy
from specdec.speculate.pass_time import PassCurve, PassTimeFit


def counters(layers, union, read_share=1.0, nbytes=1000, seconds=None):
    used = layers * union
    read = used * read_share
    return {"expert_layers": layers, "experts_used": used, "experts_read": read,
            "expert_cache_hits": used - read, "expert_bytes_read": read * nbytes,
            "expert_read_seconds": read * nbytes * 1e-9 if seconds is None else seconds}


def test_before_any_pass_the_union_is_independent_routing():
    cost = ExpertPassCost(experts=128, routed=8, expert_nbytes=1000, layers=48)
    assert cost.union(1) == pytest.approx(8)
    assert cost.union(4) == pytest.approx(independent_union(128, 8, 4))  # 29.0
    assert cost.bytes_per_pass(1) == pytest.approx(48 * 8 * 1000)
    assert cost.extra_seconds(1) == 0
    assert cost.extra_seconds(4) == pytest.approx(48 * (cost.union(4) - 8) * 1000 * DEFAULT_SECONDS_PER_BYTE)


def test_correlated_routing_makes_more_tokens_cheap():
    cost = ExpertPassCost(experts=128, routed=8, expert_nbytes=1000, layers=4)
    for _ in range(5):
        cost.observe(5, counters(4, union=8))  # five tokens, the experts of one
    assert cost.correlation.value == 0 and cost.extra_seconds(16) == 0
    # A measured union of 2.5x one token's at 4 tokens (the published figure) is between.
    cost = ExpertPassCost(experts=128, routed=8, expert_nbytes=1000, layers=4)
    cost.observe(4, counters(4, union=20))
    assert 0 < cost.correlation.value < 1 and cost.union(4) == pytest.approx(20)
    assert cost.union(8) < independent_union(128, 8, 8)


def test_independent_routing_is_learned_as_such():
    cost = ExpertPassCost(experts=64, routed=8, expert_nbytes=1000, layers=2)
    cost.observe(6, counters(2, union=independent_union(64, 8, 6)))
    assert cost.correlation.value == pytest.approx(1.0)


def test_cache_hits_and_measured_read_speed_scale_the_cost():
    cost = ExpertPassCost(experts=32, routed=4, expert_nbytes=1000, layers=2)
    cost.observe(1, counters(2, union=4, read_share=0.25, seconds=1e-3))  # 2000 bytes in 1 ms
    assert cost.miss_share.value == 0.25 and cost.seconds_per_byte.value == pytest.approx(5e-7)
    assert cost.bytes_per_pass(1) == pytest.approx(2 * 4 * 0.25 * 1000)
    # Passes of many tokens (a long prompt) do not teach the correlation.
    cost.observe(500, counters(2, union=32))
    assert cost.correlation.weight == 0


def test_no_experts_routed_teaches_nothing():
    cost = ExpertPassCost(experts=8, routed=2, expert_nbytes=10, layers=3)
    cost.observe(4, {})
    assert cost.passes == 0 and cost.correlation.weight == 0
    with pytest.raises(ValueError, match="routed experts per token"):
        ExpertPassCost(experts=8, routed=9, expert_nbytes=10, layers=3)


def test_the_fit_adds_the_growth_and_learns_the_rest():
    growth = lambda n: 0.1 * math.sqrt(n - 1)  # noqa: E731
    fit = PassTimeFit(profile=PassCurve(None, growth))
    for n in (1, 5, 1, 9):
        fit.observe(n, 2.0 + growth(n))
    a, b = fit.fit()
    assert a + b == pytest.approx(2.0) and b == pytest.approx(0.0, abs=1e-9)
    assert fit.seconds(16) == pytest.approx(2.0 + growth(16))
    plain = PassTimeFit(profile=lambda n: 0.01 * n)  # a bare profile still works as before
    assert plain.seconds(4) == pytest.approx(0.01 * 1 + 0.04)


def chain_length(growth) -> int:
    policy = DraftLengthPolicy(profile=PassCurve(None, growth))
    for _ in range(40):  # the target takes 4 of 6 drafts: acceptance ~0.8
        k = policy.update(6, 4, 1.0 + growth(7), 0.001, tokens=7)
    return k


def test_steep_expert_growth_shortens_the_chain():
    flat = chain_length(lambda n: 0.0)
    cost = ExpertPassCost(experts=128, routed=8, expert_nbytes=2e6, layers=48)  # ~0.77 s/token of experts
    steep = chain_length(cost.extra_seconds)
    assert flat >= 4 and 1 <= steep < flat


def test_speculation_on_a_streamed_moe_target_feeds_the_cost_model(tmp_path):
    target, draft = make_target_and_draft(tmp_path, "qwen3_moe")
    store = pack(target, tmp_path / "store", dtype="float32", progress=False)
    expected = specdec.load(target, dtype="float32").generate(PROMPT, max_new_tokens=16).token_ids
    ram = minimum_ram(store, draft=draft) + 20_000
    with specdec.load(store, draft=draft, dtype="float32", ram=ram, max_context=64) as lm:
        out = lm.generate(PROMPT, max_new_tokens=16)
        cost, policy = lm.expert_cost, lm.engine.strategy.policy
        assert policy.pass_time.growth == cost.extra_seconds
    assert out.token_ids == expected
    assert cost.passes == out.stats.target_passes and cost.correlation.weight > 0
    assert cost.layers.value == 3 and cost.extra_seconds(8) >= cost.extra_seconds(2) >= 0
    with specdec.load(target, draft=draft, dtype="float32") as in_ram:
        assert in_ram.expert_cost is None  # every expert in RAM: no growth
