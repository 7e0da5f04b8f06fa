"""What a generation on a mixture-of-experts target reports: distinct experts per layer and
pass, experts and bytes read per pass and per token, the expert cache's hit rate; counted
against the routing the model really did, and shown by the CLI, the bench report and the plan."""
import pytest

import specdec
from helpers.family_models import make_family_model
from helpers.moe_budget import minimum_ram
from offload.format import open_store
from offload.pack import pack
from specdec.bench.report import _expert_figures, markdown_table
from specdec.cli.reply_stats import expert_rows, summary_line
from specdec.engine import GenerationStats
from specdec.moe_routing import RoutingTrace
from specdec.moe_stats import expert_figures

PROMPT = [3, 17, 42, 8, 61, 5]


@pytest.fixture(scope="module")
def moe_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_stats")
    make_family_model(root / "m", "qwen3_moe", eos_token_id=None)
    return pack(root / "m", root / "store", dtype="float32", progress=False)


class PassUnions(RoutingTrace):
    """Distinct experts per (layer, call): what the reader is asked for."""

    def __init__(self):
        super().__init__()
        self.unions: list[int] = []

    def __call__(self, layer, ids):
        super().__call__(layer, ids)
        self.unions.append(len(set(ids.flatten().tolist())))


def test_generation_stats_count_the_routed_union_reads_and_hits(moe_store):
    # No prefetch: every read is then a routed miss (guessed reads: test_moe_prefetch.py).
    with specdec.load(moe_store, dtype="float32", ram=minimum_ram(moe_store) + 400_000, max_context=64,
                      expert_prefetch=False) as lm:
        model = lm.target.model
        model.routing_observer = trace = PassUnions()
        weights = model.weights
        before = weights.stats.expert_counters()
        out = lm.generate(PROMPT, max_new_tokens=12)
        after = weights.stats.expert_counters()
        slots = lm.plan.expert_slots
    s = out.stats
    layers = 3
    assert s.target_passes == 12 and s.source["expert_layers"] == layers * s.target_passes
    assert s.source["experts_used"] == sum(trace.unions) == after["experts_used"] - before["experts_used"]
    assert s.source["experts_read"] + s.source["expert_cache_hits"] == s.source["experts_used"]
    f = s.experts
    assert f["experts_per_layer_pass"] == sum(trace.unions) / (layers * 12)
    # A one-token pass routes to exactly 2 experts a layer; the prompt's pass to more.
    assert trace.unions[layers:] == [2] * (layers * 11) and min(trace.unions[:layers]) > 2
    assert f["expert_hit_rate"] == s.source["expert_cache_hits"] / s.source["experts_used"]
    assert 0 < f["expert_hit_rate"] < 1 and slots > 0
    assert f["expert_bytes_per_token"] == s.source["expert_bytes_read"] / 12
    extent = open_store(moe_store).expert_extents(0)[0].nbytes  # every expert the same size here
    assert s.source["expert_bytes_read"] == s.source["experts_read"] * extent
    assert s.to_dict()["expert_hit_rate"] == round(f["expert_hit_rate"], 4)


def test_a_target_in_ram_reports_no_expert_figures(moe_store):
    with specdec.load(moe_store, dtype="float32", ram=10**9, max_context=64) as lm:  # all pinned
        out = lm.generate(PROMPT, max_new_tokens=4)
    assert out.stats.experts == {} and "expert_hit_rate" not in out.stats.to_dict()
    assert expert_rows(out.stats, out.stats) == [] and "experts/layer" not in summary_line(out.stats)


def stats_with(counters, passes=4, tokens=8) -> GenerationStats:
    return GenerationStats(target_passes=passes, new_tokens=tokens, source=dict(counters))


COUNTERS = {"expert_layers": 12, "experts_used": 30, "experts_read": 18, "expert_cache_hits": 12,
            "expert_bytes_read": 18 * 4096, "expert_read_seconds": 0.0}


def test_the_cli_prints_expert_figures():
    s = stats_with(COUNTERS)
    assert "2.5 experts/layer/pass, expert hit 40%" in summary_line(s)
    rows = {name: (last, total) for name, last, total in expert_rows(s, s)}
    assert rows["distinct experts per layer per pass"] == ("2.50", "2.50")
    assert rows["experts read per pass"][0] == "4.5"
    assert rows["expert cache hit rate"][0] == "40%"


def test_the_bench_report_sums_expert_counters_over_runs():
    runs = [{"source_counters": COUNTERS}, {"source_counters": {**COUNTERS, "experts_used": 10,
                                                                 "expert_cache_hits": 0}}]
    f = _expert_figures(runs, passes=8, tokens=16)
    assert f["experts_per_layer_pass"] == 40 / 24 and f["expert_hit_rate"] == 12 / 40
    assert _expert_figures([{"bytes_read": 1}], 4, 4) == {}
    row = {"workload": "w", "contender": "plain", "temperature": 0.0, "ok": True, **f}
    table = markdown_table([row])
    assert "experts/layer/pass" in table and "| 1.67 | 0.30 |" in table
    dense = {"workload": "w", "contender": "plain", "temperature": 0.0, "ok": True}
    assert "experts/layer/pass" not in markdown_table([dense])


def test_expert_figures_need_routed_experts():
    assert expert_figures({}, 3, 3) == {}
    assert expert_figures({"expert_layers": 3, "experts_used": 0}, 3, 3) == {}


def test_the_guess_right_share_only_where_a_guess_read_something():
    counters = {"expert_layers": 4, "experts_used": 10, "expert_prefetched": 8, "expert_prefetch_used": 6}
    assert expert_figures(counters, 2, 2)["expert_guess_right"] == 6 / 8
    assert "expert_guess_right" not in expert_figures({**counters, "expert_prefetched": 0}, 2, 2)


def test_the_plan_says_how_many_experts_fit(moe_store):
    with specdec.load(moe_store, dtype="float32", ram=minimum_ram(moe_store) + 60_000, max_context=64) as lm:
        plan = lm.plan
    assert plan.experts_total == 3 * 8 and plan.expert_cache > 0
    assert (f"{plan.expert_slots} expert buffers" in plan.summary
            and f"({plan.expert_cache} of them cache; the model has 24 experts)" in plan.summary)
