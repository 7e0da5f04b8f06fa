"""The decoder against transformers: logits (prompt and incremental) and greedy tokens."""
import pytest
import torch

from helpers.models import make_tiny_model
from offload.checkpoint import open_checkpoint
from specdec.config import ModelArgs
from specdec.model import Transformer
from specdec.weights import ResidentWeights

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
# bf16 keeps 8 bits of mantissa; over 3 layers of a random model logits drift by a few
# 1e-2 from the float32 reference. Documented tolerance for bf16:
BF16_TOL = 0.1


def our_model(path, dtype):
    ckpt = open_checkpoint(path)
    args = ModelArgs.from_hf(ckpt.config)
    return Transformer(args, ResidentWeights.from_state_dict(ckpt.state_dict(), args, dtype), dtype)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_prompt_and_incremental(tmp_path, family):
    ref = make_tiny_model(tmp_path, family)
    model = our_model(tmp_path, torch.float32)
    ids = torch.randint(0, 96, (24,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids[None]).logits[0]
    cache = model.new_cache(64)
    prompt = model.forward(ids[:16], cache.next_positions(16), cache)
    steps = torch.cat([model.forward(ids[i:i + 1], cache.next_positions(1), cache) for i in range(16, 24)])
    assert (prompt - expected[:16]).abs().max() <= 1e-4
    assert (steps - expected[16:]).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_logits_within_documented_tolerance(tmp_path, family):
    ref = make_tiny_model(tmp_path, family)
    model = our_model(tmp_path, torch.bfloat16)
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(ids[None]).logits[0]
    got = model.forward(ids, torch.arange(12), model.new_cache(32))
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() <= BF16_TOL


def test_mistral_sliding_window_matches_transformers(tmp_path):
    ref = make_tiny_model(tmp_path, "mistral", sliding_window=8)
    ref.config._attn_implementation = "eager"
    model = our_model(tmp_path, torch.float32)
    assert model.args.sliding_window == 8
    ids = torch.randint(0, 96, (30,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(ids[None]).logits[0]
    cache = model.new_cache(64)
    got = torch.cat([model.forward(ids[:20], cache.next_positions(20), cache)] +
                    [model.forward(ids[i:i + 1], cache.next_positions(1), cache) for i in range(20, 30)])
    assert (got - expected).abs().max() <= 1e-4
    # The window matters: without it the logits would differ.
    full = our_model(tmp_path, torch.float32)
    full.args = ModelArgs(**{**full.args.__dict__, "sliding_window": None})
    assert (full.forward(ids, torch.arange(len(ids)), full.new_cache(64)) - expected).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_match_transformers_generate(tmp_path, family):
    import specdec

    ref = make_tiny_model(tmp_path, family, eos_token_id=None)
    prompt = [3, 17, 42, 8, 61]
    with torch.no_grad():
        expected = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    lm = specdec.load(tmp_path, dtype="float32")
    out = lm.generate(prompt, max_new_tokens=32)
    assert out.token_ids == expected
    assert len(out.token_ids) == 32
    assert out.stats.target_passes == 32 and out.stats.drafted == 0


def test_cache_crop_then_reforward_equals_fresh(tmp_path):
    make_tiny_model(tmp_path, "qwen3")
    model = our_model(tmp_path, torch.float32)
    ids = torch.randint(0, 96, (20,), generator=torch.Generator().manual_seed(4))
    cache = model.new_cache(32)
    model.forward(ids[:10], cache.next_positions(10), cache)
    model.forward(torch.tensor([5, 6, 7, 8]), cache.next_positions(4), cache)  # rejected drafts
    cache.crop(10)
    rolled = model.forward(ids[10:], cache.next_positions(10), cache)
    # A fresh cache fed the same chunks: the rejected drafts must leave no trace at all.
    fresh_cache = model.new_cache(32)
    model.forward(ids[:10], fresh_cache.next_positions(10), fresh_cache)
    fresh = model.forward(ids[10:], fresh_cache.next_positions(10), fresh_cache)
    assert torch.equal(rolled, fresh)
    assert torch.equal(cache.k[:, :, :20], fresh_cache.k[:, :, :20])
    assert torch.equal(cache.v[:, :, :20], fresh_cache.v[:, :, :20])
