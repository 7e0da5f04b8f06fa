"""The offload bench's warm-up (specdec/bench/worker.py) leaves every speculative mode's draft
holding the first prompt, as it leaves the target: no row reads that prompt inside its timed
run, so chain, tree and overlap rows compare like for like. Counted with the draft's catch-ups
(specdec/draft.py) on a tiny pair, in this process: no timing."""
import pytest

import specdec
from helpers.models import make_tiny_pair
from specdec.bench import worker

PROMPT = [3, 17, 42, 8, 61, 5, 9, 11]
FIXED = {"chain": {"k": 3}, "tree": {"tree_nodes": 4},  # every pass drafts: no plain stretch
         "overlap": {"tree_nodes": 4}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("warmup"))


def job(*prompts) -> dict:
    return {"runs": [{"prompt_index": i, "prompt_ids": p, "temperature": 0.0, "seed": 1234 + i,
                      "max_new_tokens": 8} for i, p in enumerate(prompts)]}


def timed_runs(pair, mode, *prompts) -> list[dict]:
    target, draft = pair
    lm = specdec.load(target, draft=draft, dtype="float32", speculation=mode, **FIXED[mode])
    return worker._timed_runs(job(*prompts), worker.specdec_generate(lm))


@pytest.mark.parametrize("mode", sorted(FIXED))
def test_no_mode_reads_the_first_prompt_inside_the_timed_run(pair, mode):
    other = PROMPT[:4] + [20, 21, 22, 23, 24]  # a second prompt: its new part is read in its run
    first, second = timed_runs(pair, mode, PROMPT, other)
    assert first["drafted"] > 0 and first["draft_catch_up_tokens"] == 0
    assert second["draft_catch_up_tokens"] == len(other) - 4


def test_a_one_token_warm_up_left_the_chains_prompt_to_the_timed_run(pair, monkeypatch):
    # what the warm-up was: the check above can fail
    monkeypatch.setattr(worker, "WARMUP_TOKENS", 1)
    first, = timed_runs(pair, "chain", PROMPT)
    assert first["draft_catch_up_tokens"] == len(PROMPT)


@pytest.mark.parametrize("mode", ["tree", "overlap"])
def test_the_budgets_last_token_says_nothing_to_the_draft_gate(pair, mode):
    """A decode pass with one token of room has no place for a drafted node: the gate that
    decides whether drafting pays (speculate/gate.py) must not count it as a drafted pass that
    gave one token (the warm-up's second pass is such a pass)."""
    target, draft = pair
    lm = specdec.load(target, draft=draft, dtype="float32", speculation=mode)
    gate = lm.engine.strategy.gate
    out = lm.generate(PROMPT, max_new_tokens=1).token_ids  # a prefill: not observed
    lm.generate(PROMPT + out, max_new_tokens=1)  # a decode pass, one token of room
    assert gate.rate.value == 0
    lm.generate(PROMPT + out, max_new_tokens=3)  # room for drafts: observed
    assert gate.rate.value > 0
