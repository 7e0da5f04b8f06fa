"""The target streamed from a packed store decodes exactly like the target in RAM."""
import pytest

import specdec
from helpers.models import make_noised_copy, make_tiny_model
from offload.budget import DEFAULT_OVERHEAD
from offload.pack import pack

PROMPT = [3, 17, 42, 8, 61, 5]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_streamed_speculative_greedy_equals_target_alone(tmp_path, family):
    make_tiny_model(tmp_path / "t", family, eos_token_id=None)
    make_noised_copy(tmp_path / "t", tmp_path / "d", scale=0.2)
    store = pack(tmp_path / "t", tmp_path / "store", dtype="float32", progress=False)
    expected = specdec.load(tmp_path / "t", dtype="float32").generate(PROMPT, max_new_tokens=32)
    # A budget just above the minimum pins nothing: every layer streams through the ring.
    ram = DEFAULT_OVERHEAD + 1_300_000
    with specdec.load(store, draft=tmp_path / "d", dtype="float32", ram=ram, k=4) as lm:  # drafts needed
        assert not lm.plan.pinned
        assert lm.plan.streamed, lm.plan.summary
        out = lm.generate(PROMPT, max_new_tokens=32)
    assert out.token_ids == expected.token_ids
    assert out.stats.bytes_read > 0
    assert out.stats.accepted > 0


def test_checkpoint_with_ram_budget_is_packed_into_the_cache(tmp_path):
    make_tiny_model(tmp_path / "t", "llama", eos_token_id=None)
    expected = specdec.load(tmp_path / "t", dtype="float32").generate(PROMPT, max_new_tokens=10)
    with specdec.load(tmp_path / "t", ram="1GB", dtype="float32", cache_dir=tmp_path / "cache",
                      progress=False) as lm:
        assert lm.generate(PROMPT, max_new_tokens=10).token_ids == expected.token_ids
    stores = list((tmp_path / "cache" / "stores").iterdir())
    assert len(stores) == 1 and (stores[0] / "manifest.json").exists()


def test_impossible_budget_states_the_minimum(tmp_path):
    from offload.budget import BudgetError

    make_tiny_model(tmp_path / "t", "llama")
    store = pack(tmp_path / "t", tmp_path / "store", progress=False)
    with pytest.raises(BudgetError, match=r"too small: at least .* is needed"):
        specdec.load(store, ram="10MB")
