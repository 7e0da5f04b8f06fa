"""The draft's catch-ups (reading context it missed: a prompt, the tokens of plain passes) are
counted apart from drafting proper, so a bench row's drafting cost per drafted token compares
drafts like for like (specdec/draft.py, bench report's draft_ms_per_token)."""
import pytest

import specdec
from helpers.models import make_tiny_pair
from specdec.bench.report import _draft_figures
from specdec.draft import DECODE_STEP, Drafter

PROMPT = [3, 17, 42, 8, 61, 5, 9, 11]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("catch_up"))


def test_a_decode_step_is_drafting_a_longer_catch_up_is_counted(pair):
    target, _ = pair
    model = specdec.load(target, dtype="float32").target.model
    d = Drafter(model, 64, model.args.vocab_size)
    d.catch_up(PROMPT)  # the prompt: a catch-up
    assert d.counters["draft_catch_ups"] == 1 and d.counters["draft_catch_up_tokens"] == len(PROMPT)
    assert d.counters["draft_catch_up_seconds"] > 0
    before = dict(d.counters)
    context = PROMPT + [1]
    d.catch_up(context)  # the target's token after a pass: a decode step
    context += [2, 4]
    d.catch_up(context)  # the last draft and the bonus token: still a decode step
    assert d.counters == before and DECODE_STEP == 2
    assert d.counters_since(before) == {k: 0.0 for k in before}  # every key, zeros included
    context += [5, 6, 7]  # three plain passes' tokens: a catch-up
    d.catch_up(context)
    since = d.counters_since(before)
    assert since["draft_catch_ups"] == 1 and since["draft_catch_up_tokens"] == 3


@pytest.mark.parametrize("mode", ["chain", "tree", "overlap"])
def test_the_prompts_catch_up_reaches_the_stats_apart_from_drafting(pair, mode):
    target, draft = pair
    kwargs = {"k": 3} if mode == "chain" else {"tree_nodes": 4}
    lm = specdec.load(target, draft=draft, dtype="float32", speculation=mode, **kwargs)
    out = lm.generate(PROMPT, max_new_tokens=8)
    c = out.stats.counters
    # a fixed size drafts every pass: the prompt is the only catch-up longer than a step
    assert c["draft_catch_ups"] == 1 and c["draft_catch_up_tokens"] == len(PROMPT)
    assert 0 < c["draft_catch_up_seconds"] <= out.stats.draft_seconds
    assert out.stats.to_dict()["draft_catch_up_tokens"] == len(PROMPT)


def test_report_splits_catch_ups_from_the_cost_per_drafted_token():
    run = {"position_offered": [4], "position_taken": [2], "draft_seconds": 1.0, "drafted": 8,
           "draft_catch_up_seconds": 0.6, "draft_catch_up_tokens": 40, "draft_catch_ups": 1}
    f = _draft_figures([run, dict(run)], passes=4)
    assert f["draft_ms_per_pass"] == pytest.approx(500.0)  # all drafting on the critical path
    assert f["draft_catch_up_ms_per_pass"] == pytest.approx(300.0)
    assert f["draft_ms_per_token"] == pytest.approx(50.0)  # (2.0 - 1.2) s over 16 drafts
    assert f["draft_catch_up_tokens"] == 80 and f["draft_catch_ups"] == 2
    no_counts = {k: v for k, v in run.items() if not k.startswith("draft_catch")}
    assert "draft_ms_per_token" not in _draft_figures([run, no_counts], passes=4)  # older reports


def test_report_counts_an_overlapped_trees_hidden_drafting_per_node_forwarded():
    # 0.2 s of plan time (drafting on the critical path), of it 0.1 s a prompt's catch-up;
    # 1.5 s of drafting hidden in the disk waits; 32 nodes forwarded, 8 sent
    run = {"position_offered": [4], "position_taken": [2], "draft_seconds": 0.2, "drafted": 8,
           "draft_catch_up_seconds": 0.1, "draft_catch_up_tokens": 40, "draft_catch_ups": 1,
           "draft_seconds_critical": 0.2, "draft_seconds_hidden": 1.5, "draft_nodes_forwarded": 32}
    f = _draft_figures([run], passes=4)
    assert f["draft_ms_per_pass"] == pytest.approx(50.0)
    assert f["draft_catch_up_ms_per_pass"] == pytest.approx(25.0)
    assert f["draft_ms_per_token"] == pytest.approx(50.0)  # (1.5 + 0.2 - 0.1) s over 32 nodes
