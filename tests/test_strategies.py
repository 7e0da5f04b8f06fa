"""The loop takes any Strategy: a new one plugs in without touching the engine, and the
pass hooks bracket every target pass (even one that fails)."""
import pytest

import specdec
from helpers.models import make_tiny_model
from specdec.engine import Engine, GenerationStats
from specdec.sampling import SamplingParams
from specdec.speculate.plain import Plain

PROMPT = [3, 17, 42, 8, 61, 5]


class Recording(Plain):
    """Plain decoding that records the hooks the loop calls."""

    def __init__(self):
        self.events = []

    def pass_started(self, step, plan):
        self.events.append(("start", plan.tokens.numel()))

    def pass_ended(self, step, plan):
        self.events.append(("end", plan.tokens.numel()))


def run(engine, n=5):
    stats = GenerationStats()
    out = [t for new in engine.run(PROMPT, n, SamplingParams(0.0, 0, 1.0), None, set(), stats) for t in new]
    return out, stats


def test_a_new_strategy_needs_no_change_to_the_loop(tmp_path):
    make_tiny_model(tmp_path, "llama", eos_token_id=None)
    lm = specdec.load(tmp_path, dtype="float32")
    expected = lm.generate(PROMPT, max_new_tokens=5).token_ids
    strategy = Recording()
    tokens, stats = run(Engine(lm.target.model, strategy, 64))
    assert tokens == expected
    assert stats.target_passes == 5
    assert strategy.events == [("start", 6), ("end", 6)] + [("start", 1), ("end", 1)] * 4


def test_pass_ended_runs_when_the_pass_fails(tmp_path, monkeypatch):
    make_tiny_model(tmp_path, "llama", eos_token_id=None)
    model = specdec.load(tmp_path, dtype="float32").target.model
    strategy = Recording()
    engine = Engine(model, strategy, 64)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(KeyboardInterrupt):
        run(engine)
    assert strategy.events == [("start", 6), ("end", 6)]
    assert engine.cache.length == 0  # nothing half-written stays in the cache
