"""Gemma 2, Gemma 3, Phi-3 and the mixture-of-experts families (more in test_moe.py) against
transformers on tiny random models of each variant:
float32 logits, greedy speculative decoding (chain, tree, overlap), streaming from a store,
the sliding window inside tree passes, Gemma 3 multimodal checkpoints, clear refusals."""
import json
import re

import pytest
import torch

import specdec
from helpers.family_models import VARIANTS, make_family_model
from helpers.family_runs import PROMPT, hf_greedy, our_model, reference_logits, target_and_draft
from offload.pack import pack
from specdec.config import ConfigError, ModelArgs

TOL = 1e-4


def prompt_then_steps(model, ids, prompt_len):
    cache = model.new_cache(128)
    out = [model.forward(ids[:prompt_len], cache.next_positions(prompt_len), cache)]
    out += [model.forward(ids[i:i + 1], cache.next_positions(1), cache) for i in range(prompt_len, len(ids))]
    return torch.cat(out)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_float32_logits_match_transformers(tmp_path, variant):
    ref = make_family_model(tmp_path, variant)
    ids = torch.randint(0, 96, (24,), generator=torch.Generator().manual_seed(1))
    expected = reference_logits(ref, ids)  # 24 tokens: past every sliding window, within longrope's short range
    got = prompt_then_steps(our_model(tmp_path), ids, 16)
    assert (got - expected).abs().max() <= TOL


# Each variant flag changes the logits (so the parity above tests it): switched off, they differ.
FLAG_OFF = [("gemma2", dict(attn_logit_softcapping=None)), ("gemma2", dict(final_logit_softcapping=None)),
            ("gemma2-nocap", dict(local_layers=())), ("gemma3", dict(local_rope=None)),
            ("gemma3", dict(query_pre_attn_scalar=None)), ("gemma3-cap", dict(final_logit_softcapping=None)),
            ("phi3", dict(sliding_window=None)), ("phi3", dict(rotary_dim=None)),
            ("phi3-longrope", dict(rope_scaling=None)), ("qwen3_moe", dict(norm_topk_prob=False)),
            ("qwen3_moe-unnormed", dict(norm_topk_prob=True)), ("qwen3_moe", dict(experts_per_token=1)),
            ("mixtral", dict(sliding_window=None)), ("olmoe", dict(clip_qkv=None))]


@pytest.mark.parametrize("variant, off", FLAG_OFF)
def test_each_variant_flag_matters(tmp_path, variant, off):
    ref = make_family_model(tmp_path, variant)
    ids = torch.randint(0, 96, (24,), generator=torch.Generator().manual_seed(1))
    expected = reference_logits(ref, ids)
    changed = our_model(tmp_path, **off)
    got = changed.forward(ids, torch.arange(24), changed.new_cache(32))
    assert (got - expected).abs().max() > 1e-3


def test_longrope_long_factors_match_transformers(tmp_path):
    """Tokens at positions past original_max_position_embeddings (32) rotate with the long
    factors: transformers does so for a whole forward whose last position is past it."""
    ref = make_family_model(tmp_path, "phi3-longrope")
    ids = torch.randint(0, 96, (16,), generator=torch.Generator().manual_seed(4))
    positions = torch.arange(40, 56)
    with torch.no_grad():
        expected = ref(ids[None], position_ids=positions[None]).logits[0]
    model = our_model(tmp_path)
    assert (model.forward(ids, positions, model.new_cache(32)) - expected).abs().max() <= TOL
    short = model.args.rope_scaling["short_factor"]
    short_only = our_model(tmp_path, rope_scaling={**model.args.rope_scaling, "long_factor": short})
    assert (short_only.forward(ids, positions, short_only.new_cache(32)) - expected).abs().max() > 1e-3


def test_longrope_switches_per_token_at_the_original_length(tmp_path):
    """A pass over positions on both sides of 32 equals one token at a time: each token picks
    its factors by its own position (what keeps speculation exact; see specdec/families.py)."""
    make_family_model(tmp_path, "phi3-longrope")
    ids = torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(6))
    model = our_model(tmp_path)
    one_pass = model.forward(ids, torch.arange(40), model.new_cache(64))
    torch.testing.assert_close(prompt_then_steps(model, ids, 1), one_pass, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("variant", ["gemma2", "gemma3", "phi3-longrope"])
def test_bf16_logits_stay_near_float32(tmp_path, variant):
    ref = make_family_model(tmp_path, variant)
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(2))
    model = our_model(tmp_path, torch.bfloat16)
    got = model.forward(ids, torch.arange(12), model.new_cache(32))
    assert got.dtype == torch.float32
    assert (got - reference_logits(ref, ids)).abs().max() <= 0.1


@pytest.mark.parametrize("speculation", ["chain", "tree", "overlap"])
@pytest.mark.parametrize("variant", ["gemma2", "gemma3", "phi3"])
def test_greedy_speculative_equals_transformers_generate(tmp_path, variant, speculation):
    # Windows of 4 and 6 with 46 positions: tree nodes see their ancestry within the window.
    ref, target, draft = target_and_draft(tmp_path, variant, sliding_window=4)
    expected = hf_greedy(ref, 40)
    # Fixed k / tree size: no test depends on timings or the cost models.
    lm = specdec.load(target, draft=draft, dtype="float32", speculation=speculation,
                      k=4 if speculation == "chain" else None, tree_nodes=8)
    out = lm.generate(PROMPT, max_new_tokens=40)
    assert out.token_ids == expected
    assert out.stats.accepted > 0 and out.stats.tokens_per_pass > 1.2


@pytest.mark.parametrize("variant", ["gemma3", "phi3"])
def test_tree_pass_logits_equal_each_path_with_a_window_shorter_than_the_context(tmp_path, variant):
    """One tree pass over a context longer than the window scores every node as feeding its
    own path alone would: a node's visibility is its window and its ancestry."""
    from specdec.draft import Drafter
    from specdec.sampling import SamplingParams
    from specdec.speculate.base import Step
    from specdec.speculate.tree import Tree, TreeSettings

    make_family_model(tmp_path, variant, sliding_window=3)
    model = our_model(tmp_path)
    context = [5, 9, 1, 33, 7, 2, 60, 11, 4, 8]  # 10 tokens against a window of 3
    settings = TreeSettings(max_nodes=10, width=2, fixed=True)  # narrow: paths as long as the window
    strategy = Tree(Drafter(model, 128, model.args.vocab_size), settings)
    cache = model.new_cache(128)
    model.forward(torch.tensor(context[:8]), cache.next_positions(8), cache)
    plan = strategy.plan(Step(context, cache, 32, SamplingParams(0.0, 0, 1.0), None))
    tree = plan.state.tree
    assert max(tree.depths) >= 3  # paths longer than the window
    logits = model.forward(plan.tokens, plan.positions, cache, mask=plan.mask, num_logits=plan.num_logits)
    for node in range(-1, len(tree)):
        path, n = [], node
        while n >= 0:
            path.insert(0, tree.tokens[n])
            n = tree.parents[n]
        ids = context + path
        want = model.forward(torch.tensor(ids), torch.arange(len(ids)), model.new_cache(128))[-1]
        torch.testing.assert_close(logits[node + 1], want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("variant", ["gemma3", "phi3-longrope"])
def test_streamed_from_a_store_equals_in_ram(tmp_path, variant):
    from offload.budget import DEFAULT_OVERHEAD, BudgetError

    ref, target, draft = target_and_draft(tmp_path, variant)
    store = pack(target, tmp_path / "store", dtype="float32", progress=False)
    expected = specdec.load(target, dtype="float32").generate(PROMPT, max_new_tokens=24)
    # A budget just above the minimum pins nothing: every layer streams through the ring.
    with pytest.raises(BudgetError) as e:
        specdec.load(store, draft=draft, dtype="float32", ram=DEFAULT_OVERHEAD, max_context=128)
    minimum = float(re.search(r"at least ([0-9.]+) MB", str(e.value)).group(1)) * 1e6
    with specdec.load(store, draft=draft, dtype="float32", ram=int(minimum) + 20_000,
                      max_context=128, k=4) as lm:
        assert lm.plan.streamed and not lm.plan.pinned, lm.plan.summary
        out = lm.generate(PROMPT, max_new_tokens=24)
    assert out.token_ids == expected.token_ids == hf_greedy(ref, 24)
    assert out.stats.bytes_read > 0


def test_gemma3_multimodal_checkpoint_runs_its_text_decoder(tmp_path):
    """A Gemma3ForConditionalGeneration checkpoint: config nested in text_config, tensors under
    language_model.model.*, a vision tower beside them. specdec runs the text part."""
    from safetensors.torch import load_file, save_file

    ref = make_family_model(tmp_path / "text", "gemma3")
    text_cfg = json.loads((tmp_path / "text" / "config.json").read_text())
    multi = tmp_path / "multi"
    multi.mkdir()
    state = {f"language_model.{k}": v for k, v in load_file(tmp_path / "text" / "model.safetensors").items()}
    state["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(4, 3, 2, 2)
    state["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(8, 64)
    save_file(state, multi / "model.safetensors", metadata={"format": "pt"})
    (multi / "config.json").write_text(json.dumps({
        "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {**text_cfg, "model_type": "gemma3_text"}, "vision_config": {"model_type": "siglip_vision_model"},
        "tie_word_embeddings": True, "eos_token_id": [1, 106]}))
    ids = torch.randint(0, 96, (20,), generator=torch.Generator().manual_seed(5))
    got = our_model(multi).forward(ids, torch.arange(20), our_model(multi).new_cache(32))
    assert (got - reference_logits(ref, ids)).abs().max() <= TOL
    store = pack(multi, tmp_path / "store", dtype="float32", progress=False)
    assert json.loads((store / "manifest.json").read_text())["config"]["model_type"] == "gemma3_text"
    assert specdec.load(store, dtype="float32").generate(PROMPT, max_new_tokens=8).token_ids == \
        specdec.load(tmp_path / "text", dtype="float32").generate(PROMPT, max_new_tokens=8).token_ids


def test_hub_style_gemma3_config_fills_the_class_defaults(tmp_path):
    # Gemma 3 27B's config.json leaves vocab_size, rope_theta and the layer pattern to the
    # config class; the same defaults apply here.
    cfg = {"model_type": "gemma3", "text_config": {
        "model_type": "gemma3_text", "hidden_size": 5376, "intermediate_size": 21504,
        "num_hidden_layers": 62, "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
        "query_pre_attn_scalar": 168, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024}}
    args = ModelArgs.from_hf(cfg)
    assert (args.vocab_size, args.rope_theta, args.local_rope["rope_theta"]) == (262208, 1e6, 1e4)
    assert args.rope_scaling == {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}
    assert len(args.local_layers) == 52 and 5 not in args.local_layers and 4 in args.local_layers
    assert args.tie_word_embeddings and args.query_pre_attn_scalar == 168 and args.local_window == 1024


@pytest.mark.parametrize("model_type, says", [
    ("gemma3n", "Gemma 3n"), ("phi3small", "Phi-3-small"), ("phimoe", "mixture of experts"),
    ("gemma", "specdec runs")])
def test_unsupported_variants_name_what_is_supported(model_type, says):
    cfg = {"model_type": model_type, "hidden_size": 64, "num_attention_heads": 4}
    with pytest.raises(ConfigError, match=rf"{model_type}' is not supported.*{says}.*gemma2, gemma3, "
                                          r"gemma3_text, phi3"):
        ModelArgs.from_hf(cfg)


@pytest.mark.parametrize("change, says", [
    (dict(hidden_activation="gelu"), "hidden_activation 'gelu' is not supported"),
    (dict(layer_types=["sliding_attention"]), "layer_types must list 3 entries"),
    (dict(rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 1e6}}),
     "rope scaling 'yarn' on the global layers is not supported"),
    (dict(use_bidirectional_attention=True), "EmbeddingGemma"),
    (dict(model_type="gemma3"), "gemma3 without a text_config")])
def test_bad_gemma_configs_are_clear_errors(change, says):
    from helpers.family_models import family_config

    cfg = {**family_config("gemma3").to_dict(), **change}
    with pytest.raises(ConfigError, match=says):
        ModelArgs.from_hf(cfg, source="x/config.json")


def test_bad_longrope_factors_are_a_clear_error():
    from helpers.family_models import family_config

    cfg = family_config("phi3-longrope").to_dict()
    cfg["rope_parameters"]["long_factor"] = [1.0, 2.0]
    with pytest.raises(ConfigError, match="longrope long_factor must list 4 positive numbers"):
        ModelArgs.from_hf(cfg)


@pytest.mark.parametrize("variant", ["gemma2", "gemma3", "phi3", "qwen3_moe"])
def test_a_forward_in_layer_steps_equals_forward_and_a_dropped_one_changes_nothing(tmp_path, variant):
    """model.forward_steps (the overlapped draft's forwards, a layer per target wait): the same
    logits and cache entries as forward, each family's hooks included; one dropped part way
    leaves the cache as it was."""
    make_family_model(tmp_path, variant)
    model = our_model(tmp_path)
    ids = torch.randint(0, 96, (20,), generator=torch.Generator().manual_seed(4))
    a, b = model.new_cache(64), model.new_cache(64)
    for cache in (a, b):
        model.forward(ids[:12], cache.next_positions(12), cache)
    dropped = model.forward_steps(ids[16:20], b.next_positions(4), b)
    assert dropped.step() is False and b.length == 12
    want = model.forward(ids[12:20], a.next_positions(8), a)
    steps = model.forward_steps(ids[12:20], b.next_positions(8), b)
    calls = 1
    while not steps.step():
        calls += 1
    assert calls == model.args.num_layers
    assert torch.equal(steps.logits, want)
    assert b.length == a.length == 20
    assert torch.equal(b.k[:, :, :20], a.k[:, :, :20]) and torch.equal(b.v[:, :, :20], a.v[:, :, :20])
