"""The mixture-of-experts families (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE) against transformers on
tiny random models (tests/helpers/family_models.py; their float32 logits and option flags are checked
in test_families.py): the shared expert, Mixtral's names, bf16, greedy speculative decoding,
a sampled chi-square run, clear refusals."""
import pytest
import torch

import specdec
from helpers.models import make_noised_copy, sharpen_lm_head
from helpers.family_models import make_family_model as make_moe_model
from helpers.family_runs import PROMPT, hf_greedy, our_model, reference_logits, target_and_draft
from offload.checkpoint import open_checkpoint
from specdec.config import ConfigError, ModelArgs


def test_qwen2_moe_shared_expert_matters(tmp_path):
    """Without the shared expert's output the logits differ from transformers' (so the parity
    test covers the shared expert and its gate)."""
    from safetensors.torch import load_file, save_file

    ref = make_moe_model(tmp_path, "qwen2_moe")
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(3))
    state = load_file(tmp_path / "model.safetensors")
    for name in state:
        if "shared_expert.down_proj" in name:
            state[name] = torch.zeros_like(state[name])
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = our_model(tmp_path)
    got = model.forward(ids, torch.arange(12), model.new_cache(16))
    assert (got - reference_logits(ref, ids)).abs().max() > 1e-3


def test_mixtral_names_are_read_in_the_common_spelling(tmp_path):
    make_moe_model(tmp_path, "mixtral")
    names = dict(open_checkpoint(tmp_path).tensors())
    assert "model.layers.0.mlp.gate.weight" in names
    assert "model.layers.2.mlp.experts.7.up_proj.weight" in names
    assert not any("block_sparse_moe" in n for n in names)


@pytest.mark.parametrize("variant", ["qwen3_moe", "olmoe"])
def test_bf16_logits_stay_near_float32(tmp_path, variant):
    ref = make_moe_model(tmp_path, variant)
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(2))
    model = our_model(tmp_path, torch.bfloat16)
    got = model.forward(ids, torch.arange(12), model.new_cache(32))
    # bf16 router logits may flip a near-tie between experts (a step in one token's logits,
    # as in transformers' own bf16 run): the typical error stays small.
    assert got.dtype == torch.float32
    assert (got - reference_logits(ref, ids)).abs().mean() <= 0.05


@pytest.mark.parametrize("variant, speculation", [("qwen3_moe", "chain"), ("qwen2_moe", "tree"),
                                                  ("mixtral", "chain"), ("olmoe", "overlap")])
def test_greedy_speculative_equals_transformers_generate(tmp_path, variant, speculation):
    ref, target, draft = target_and_draft(tmp_path, variant)
    expected = hf_greedy(ref, 32)
    lm = specdec.load(target, draft=draft, dtype="float32", speculation=speculation,
                      k=4 if speculation == "chain" else None, tree_nodes=8)
    out = lm.generate(PROMPT, max_new_tokens=32)
    assert out.token_ids == expected
    assert out.stats.accepted > 0 and out.stats.tokens_per_pass > 1.2


@pytest.mark.parametrize("change, says", [
    (dict(num_experts_per_tok=9), "num_experts_per_tok=9 is more than the 8 experts"),
    (dict(decoder_sparse_step=2), "decoder_sparse_step=2"),
    (dict(mlp_only_layers=[1]), "mlp_only_layers"),
    (dict(use_sliding_window=True), "use_sliding_window=true"),
    (dict(num_experts=0), "num_experts must be a positive integer")])
def test_bad_moe_configs_are_clear_errors(change, says):
    from helpers.family_models import family_config as moe_config

    cfg = moe_config("qwen3_moe").to_dict()
    cfg["num_experts"] = cfg.pop("num_local_experts")  # the spelling of Qwen's own config.json
    cfg.update(change)
    with pytest.raises(ConfigError, match=says):
        ModelArgs.from_hf(cfg, source="x/config.json")


def test_gpt_oss_is_refused_naming_what_is_missing():
    with pytest.raises(ConfigError, match="gpt-oss needs attention sinks"):
        ModelArgs.from_hf({"model_type": "gpt_oss", "hidden_size": 64, "num_attention_heads": 4})


@pytest.mark.slow
def test_moe_speculative_sampling_matches_target_distribution(tmp_path):
    from helpers.distribution import exact_two_token_distribution, pvalue, pvalue_against, sample_two_tokens
    from specdec.sampling import SamplingParams

    target, draft = tmp_path / "t", tmp_path / "d"
    make_moe_model(target, "qwen3_moe", vocab_size=16, eos_token_id=None, tie_word_embeddings=False)
    sharpen_lm_head(target, 4.0)
    make_noised_copy(target, draft, scale=0.3)
    sampling = dict(temperature=0.8, top_k=6, top_p=0.9)
    exact = exact_two_token_distribution(target, SamplingParams(**sampling))
    draft_exact = exact_two_token_distribution(draft, SamplingParams(**sampling))
    lm = specdec.load(target, draft=draft, dtype="float32", k=3)
    counts, totals = sample_two_tokens(lm, 2000, **sampling)
    assert 0 < totals["accepted"] < totals["drafted"]
    assert pvalue(counts, exact) > 1e-3
    assert pvalue_against(counts, draft_exact) < 1e-6


def test_routing_statistics_of_a_traced_pass(tmp_path):
    from specdec.moe_routing import RoutingTrace, independent_union, routing_statistics

    make_moe_model(tmp_path, "qwen3_moe")
    model = our_model(tmp_path)
    trace = RoutingTrace()
    model.routing_observer = trace
    ids = torch.randint(0, 96, (20,), generator=torch.Generator().manual_seed(4))
    model.forward(ids, torch.arange(20), model.new_cache(32))
    stats = routing_statistics(trace, experts=8, pass_sizes=(1, 4, 8))
    assert stats["tokens"] == 20 and sorted(trace.layers) == [0, 1, 2]
    assert stats["distinct_per_pass"][1] == 2  # k distinct experts per token
    assert 2 < stats["distinct_per_pass"][4] <= 8 and stats["distinct_per_pass"][8] >= stats["distinct_per_pass"][4]
    assert 0 <= stats["neighbour_reuse"] <= 1
    assert independent_union(128, 8, 4) == pytest.approx(29.0, abs=0.5)  # the figure the docs quote
    assert independent_union(128, 8, 8) == pytest.approx(51.6, abs=0.5)


def test_routing_statistics_by_hand():
    from specdec.moe_routing import RoutingTrace, routing_statistics

    trace = RoutingTrace()
    trace(0, torch.tensor([[0, 1], [1, 2]]))  # two calls: a prompt pass, then one token
    trace(0, torch.tensor([[3, 4]]))
    stats = routing_statistics(trace, experts=8, pass_sizes=(1, 2, 3))
    assert stats["distinct_per_pass"] == {1: 2, 2: 3.5, 3: 5}  # windows {0,1,2}, {1,2,3,4}
    assert stats["neighbour_reuse"] == 0.25  # 1 of 2 shared, then 0 of 2


def test_routing_statistics_need_a_trace():
    from specdec.moe_routing import RoutingTrace, routing_statistics

    with pytest.raises(ValueError, match="the trace is empty"):
        routing_statistics(RoutingTrace(), experts=8)
