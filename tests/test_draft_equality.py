"""Greedy speculative decoding == the target's own greedy decoding, for every family and
both speculation modes, with transformers' greedy generate as the reference (float32).
Mistral runs with a sliding window shorter than the context; qwen2 has biases, qwen3
qk-norm (helpers.models perturbs both so they matter)."""
import pytest
import torch

import specdec
from helpers.models import make_noised_copy, make_tiny_model, sharpen_lm_head

PROMPT = [3, 17, 42, 8, 61, 5]
NEW = 24
WINDOW = 8


def family_pair(tmp_path, family):
    extra = dict(sliding_window=WINDOW) if family == "mistral" else {}
    target, draft = tmp_path / "t", tmp_path / "d"
    make_tiny_model(target, family, eos_token_id=None, **extra)
    sharpen_lm_head(target, 8.0)  # peaked: a noised draft agrees often, so drafts get accepted
    make_noised_copy(target, draft, scale=0.3)
    return target, draft


def transformers_greedy(path, family):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                              attn_implementation="eager")
    with torch.no_grad():
        out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=NEW, min_new_tokens=NEW,
                          do_sample=False, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_greedy_speculative_equals_transformers_greedy(tmp_path, family):
    target, draft = family_pair(tmp_path, family)
    if family == "mistral":
        assert len(PROMPT) + NEW > 2 * WINDOW  # the window really cuts the context
    expected = transformers_greedy(target, family)
    assert specdec.load(target, dtype="float32").generate(PROMPT, max_new_tokens=NEW).token_ids == expected
    for speculation, size in (("chain", dict(k=4)), ("tree", dict(tree_nodes=12)),
                              ("overlap", dict(tree_nodes=12))):
        lm = specdec.load(target, draft=draft, dtype="float32", speculation=speculation, **size)
        out = lm.generate(PROMPT, max_new_tokens=NEW)
        assert out.token_ids == expected, speculation
        assert out.stats.accepted > 0, speculation  # drafts were taken: verification really ran
        assert out.stats.target_passes < NEW, speculation
