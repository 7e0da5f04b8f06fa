"""What the demo runs when the user names no draft: plain decoding, planned alone, so the whole
target is pinned under the demo budget and a pass reads nothing from disk; naming a mode that
drafts with a model (or a chain length, or a tree size) brings the shipped draft, beside which
the target streams."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import specdec
from helpers.demo_cache import demo_cache
from offload.budget import Budget, parse_size
from offload.format import open_store
from specdec.cli.banner import banner
from specdec.config import ModelArgs
from specdec.demo import DEMO_DRAFT_DIR, DEMO_MAX_CONTEXT, DEMO_RAM, demo_draft
from specdec.drafts import Draft, LookupDraft, ModelDraft
from specdec.load_settings import LoadSettings
from specdec.sampling_params import preset

needs_draft = pytest.mark.skipif(not (DEMO_DRAFT_DIR / "config.json").exists(),
                                 reason="needs the shipped demo draft")


def test_no_draft_named_is_plain_decoding_and_a_model_mode_is_the_shipped_draft():
    assert demo_draft(None, draft_model=False) is None
    assert demo_draft(None, draft_model=True) == ModelDraft(DEMO_DRAFT_DIR)
    given = ModelDraft(Path("elsewhere"))
    assert demo_draft(given, draft_model=False) is given


@needs_draft
@pytest.mark.parametrize("settings, mode, kind", [
    ({}, "plain", type(None)),
    ({"speculation": "chain"}, "chain", ModelDraft),
    ({"k": 3}, "chain", ModelDraft),  # a chain length asks for the draft model
    ({"speculation": "tree", "tree_nodes": 16}, "tree", ModelDraft),
    ({"tree_nodes": 16}, "chain", ModelDraft),
    ({"draft": "lookup"}, "lookup", LookupDraft),
])
def test_demo_settings_pick_the_draft(smollm2_gguf, settings, mode, kind):
    s = LoadSettings(**settings).with_demo_defaults()
    assert isinstance(s.draft, kind)
    assert (s.mode() if s.draft is not None else "plain") == mode
    assert s.target is not None and s.max_context == DEMO_MAX_CONTEXT


@pytest.fixture
def cached_demo(tmp_path, smollm2_store, smollm2_gguf):
    """A cache holding the demo target's store as `specdec chat` packs it, and that store."""
    return demo_cache(tmp_path / "cache", smollm2_store, smollm2_gguf), smollm2_store


@needs_draft
@pytest.mark.slow
def test_at_the_demo_budget_plain_pins_the_target_and_the_draft_makes_it_stream(smollm2_store):
    store_path = smollm2_store
    store = open_store(store_path)
    args = ModelArgs.from_hf(store.config)
    budget = Budget(DEMO_RAM, "the demo's default")
    plan = lambda draft, ram: draft.plan(store, args, ram, torch.bfloat16, DEMO_MAX_CONTEXT)  # noqa: E731
    alone = plan(Draft(), budget)  # plain decoding plans as a draft that takes no RAM
    assert alone.streamed == () and alone.streamed_bytes_per_pass == 0
    pair = plan(ModelDraft(DEMO_DRAFT_DIR), budget)
    assert pair.streamed and pair.streamed_bytes_per_pass > 40e6  # ~53 MB per pass
    # Why no budget makes the draft the default: it takes more RAM than all the target's
    # layers, so the least budget that holds the pair already holds the whole target without
    # it. A draft small enough to break this calls for measuring the default again
    # (tools/demo_speed.py).
    assert pair.draft_bytes > sum(store.layer_nbytes(i) for i in range(store.num_layers))
    assert plan(Draft(), pair.minimum_bytes).streamed == ()


@needs_draft
@pytest.mark.slow
def test_the_demo_default_reads_nothing_per_pass(cached_demo):
    cache, _ = cached_demo
    with specdec.load(cache_dir=cache, progress=False) as lm:
        assert lm.engine.strategy.name == "plain" and lm.draft is None
        assert lm.plan.streamed == () and lm.plan.budget_bytes == parse_size(DEMO_RAM)
        shown = banner(lm, argparse.Namespace(target=None, ram=None, preset=None))
        assert "all 30 layers pinned" in shown and "--speculation chain" in shown
        out = lm.chat([{"role": "user", "content": "What is the capital of France?"}], 8,
                      sampling=preset("demo"))
    assert out.stats.new_tokens == out.stats.target_passes > 0  # one token a pass
    assert out.stats.bytes_read == 0  # every layer was read once, at load
