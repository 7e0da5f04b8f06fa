"""draft="self": 4-bit substitutes of the target's streamed layers draft for it, exactly."""
import json

import pytest
import torch

import specdec
from helpers.cli import cli_in_process
from helpers.models import make_tiny_model, sharpen_lm_head
from helpers.distribution import exact_two_token_distribution, pvalue, sample_two_tokens
from offload.budget import DEFAULT_OVERHEAD, BudgetError
from offload.encodings import Q4Weight
from offload.format import open_store
from offload.pack import pack
from specdec.cli.banner import banner
from specdec.self_draft import SelfDraftError, SubstituteCache, substitute_nbytes

PROMPT = [3, 17, 42, 8, 61, 5]


def _store(tmp_path, dtype="float32", layers=4, **overrides):
    make_tiny_model(tmp_path / "t", "llama", eos_token_id=None, num_hidden_layers=layers, **overrides)
    return pack(tmp_path / "t", tmp_path / "store", dtype=dtype, progress=False)


def _ram_pinning(store, n_pinned: int, context: int = 256) -> int:
    """A budget that pins `n_pinned` layers beside the substitutes of the others (float32)."""
    from specdec.cache import KVCache

    s = open_store(store)
    layer, sub = s.layer_nbytes(0), substitute_nbytes(s.layer_tensors(0))
    kv = 2 * KVCache.nbytes_for(s.num_layers, 2, 16, context, torch.float32)  # target + draft
    all_streamed = DEFAULT_OVERHEAD + s.resident_nbytes + kv + 2 * layer + s.num_layers * sub
    return all_streamed + n_pinned * (layer - sub) + (layer - sub) // 2


# Sizes fixed: these tests need drafts, and the adaptive cost models may rightly decide that
# drafting does not pay for a tiny model in RAM on a slow machine (a timing, not a property).
FIXED_SIZE = {"chain": {"k": 4}, "tree": {"tree_nodes": 8}, "overlap": {"tree_nodes": 8}}


@pytest.mark.parametrize("speculation", ["chain", "tree", "overlap"])
def test_self_draft_greedy_equals_the_target_alone_streamed(tmp_path, speculation):
    store = _store(tmp_path)
    expected = specdec.load(tmp_path / "t", dtype="float32").generate(PROMPT, max_new_tokens=24)
    with specdec.load(store, draft="self", dtype="float32", ram=_ram_pinning(store, 1),
                      cache_dir=tmp_path / "cache", progress=False, speculation=speculation,
                      max_context=256, **FIXED_SIZE[speculation]) as lm:
        assert lm.plan.pinned and lm.plan.streamed, lm.plan.summary
        out = lm.generate(PROMPT, max_new_tokens=24)
    assert out.token_ids == expected.token_ids
    assert out.stats.accepted > 0 and out.stats.tokens_per_pass > 1.5


def test_self_draft_of_a_bf16_store_equals_the_target_alone(tmp_path):
    # A bf16 target (its store), computed in float32: exact comparisons (in bf16 compute a
    # many-token pass and a one-token pass round differently, so near-ties may flip).
    store = _store(tmp_path, dtype="bfloat16")
    with specdec.load(store, dtype="float32", ram="1GB") as lm:
        expected = lm.generate(PROMPT, max_new_tokens=24).token_ids
    with specdec.load(store, draft="self", dtype="float32", ram=_ram_pinning(store, 1),
                      cache_dir=tmp_path / "cache", progress=False, speculation="tree",
                      max_context=256, **FIXED_SIZE["tree"]) as lm:
        out = lm.generate(PROMPT, max_new_tokens=24)
    assert out.token_ids == expected
    assert out.stats.accepted > 0


def test_self_draft_of_a_target_in_ram(tmp_path):
    make_tiny_model(tmp_path / "t", "llama", eos_token_id=None)
    plain = specdec.load(tmp_path / "t", dtype="float32").generate(PROMPT, max_new_tokens=16)
    lm = specdec.load(tmp_path / "t", draft="self", speculation="tree", dtype="float32")
    out = lm.generate(PROMPT, max_new_tokens=16)
    assert out.token_ids == plain.token_ids
    weights = lm.draft.model.weights
    layers = list(weights.layers())
    # In RAM every layer gets a substitute (sharing them would make the draft the target).
    assert all(isinstance(l["mlp.up_proj.weight"], Q4Weight) for l in layers)
    assert weights.resident["model.embed_tokens.weight"] is \
        lm.target.model.weights.resident["model.embed_tokens.weight"]


def test_pinned_layers_are_shared_and_counted_once(tmp_path):
    store = _store(tmp_path)
    with specdec.load(store, draft="self", dtype="float32", ram=_ram_pinning(store, 2),
                      cache_dir=tmp_path / "cache", progress=False, max_context=256) as lm:
        plan = lm.plan
        s = open_store(store)
        assert plan.draft_bytes == sum(substitute_nbytes(s.layer_tensors(i)) for i in plan.streamed)
        target_pinned = lm.target.model.weights.pinned_tensors
        draft_layers = list(lm.draft.model.weights.layers())
        for i in plan.pinned:  # the very same tensors, no copy
            assert draft_layers[i]["mlp.up_proj.weight"] is target_pinned[i]["mlp.up_proj.weight"]
        for i in plan.streamed:
            assert isinstance(draft_layers[i]["mlp.up_proj.weight"], Q4Weight)
        assert "self-draft" in lm.draft.description
        # Its path is the target's: the banner names it by what it is, from its Draft kind.
        assert f"draft: {lm.draft.description}, " in banner(lm)


def test_info_json_names_a_self_draft_by_what_it_is_not_the_target_path(tmp_path, capsys):
    store = _store(tmp_path)
    common = ["info", "--target", str(store), "--draft", "self", "--ram", str(_ram_pinning(store, 1)),
              "--dtype", "float32", "--max-context", "256", "--cache-dir", str(tmp_path / "cache")]
    r = cli_in_process(capsys, *common, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    draft = data["draft"]
    assert draft["kind"] == "self" and "path" not in draft and str(store) not in json.dumps(draft)
    assert draft["encoding"] == "q4"
    assert draft["shared_layers"] == data["plan"]["pinned"] == [0]
    assert draft["substituted_layers"] == data["plan"]["streamed"] == [1, 2, 3]
    assert f"draft: {draft['label']}, " in cli_in_process(capsys, *common).stdout  # the banner's


def test_info_json_gives_a_draft_model_its_path(tmp_path, capsys):
    store = _store(tmp_path)
    make_tiny_model(tmp_path / "d", "llama", eos_token_id=None, num_hidden_layers=1)
    r = cli_in_process(capsys, "info", "--target", str(store), "--draft", str(tmp_path / "d"),
                       "--ram", "1GB", "--cache-dir", str(tmp_path / "cache"), "--json")
    assert r.returncode == 0, r.stderr
    draft = json.loads(r.stdout)["draft"]
    assert draft == {"kind": "model", "path": str(tmp_path / "d"), "label": str(tmp_path / "d")}


def test_substitutes_are_made_once_into_the_cache(tmp_path):
    store = _store(tmp_path)
    kwargs = dict(draft="self", dtype="float32", ram=_ram_pinning(store, 0), max_context=256,
                  cache_dir=tmp_path / "cache", progress=False)
    with specdec.load(store, **kwargs) as lm:
        first = lm.generate(PROMPT, max_new_tokens=8).token_ids
    cache = SubstituteCache(open_store(store), tmp_path / "cache")
    files = sorted(cache.dir.glob("*.safetensors"))
    assert len(files) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    with specdec.load(store, **kwargs) as lm:
        assert lm.generate(PROMPT, max_new_tokens=8).token_ids == first
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read back, not rebuilt


def test_a_damaged_substitute_names_itself_and_the_fix(tmp_path):
    store = _store(tmp_path)
    kwargs = dict(draft="self", dtype="float32", ram=_ram_pinning(store, 0), max_context=256,
                  cache_dir=tmp_path / "cache", progress=False)
    specdec.load(store, **kwargs).close()
    victim = sorted(SubstituteCache(open_store(store), tmp_path / "cache").dir.glob("*.safetensors"))[1]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(SelfDraftError, match=r"layer_00001\.safetensors.*delete"):
        specdec.load(store, **kwargs)


def test_impossible_budget_states_the_minimum_with_the_substitutes(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(BudgetError, match=r"too small: at least .* draft"):
        specdec.load(store, draft="self", ram="10MB", cache_dir=tmp_path / "cache")


def test_a_quantized_target_is_refused_with_what_to_do(tmp_path):
    make_tiny_model(tmp_path / "t", "llama", eos_token_id=None)
    store = pack(tmp_path / "t", tmp_path / "q4", quant="q4", progress=False)
    with pytest.raises(SelfDraftError, match=r"already quantized \(q4\).*--ram.*--draft"):
        specdec.load(store, draft="self", ram="1GB", cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_self_draft_sampling_matches_target_distribution(tmp_path):
    from specdec.sampling import SamplingParams

    target = tmp_path / "t"
    make_tiny_model(target, "llama", vocab_size=16, eos_token_id=None)
    sharpen_lm_head(target, 40.0)
    sampling = dict(temperature=1.0)
    exact = exact_two_token_distribution(target, SamplingParams(**sampling))
    lm = specdec.load(target, draft="self", dtype="float32", k=3)
    counts, totals = sample_two_tokens(lm, 2000, **sampling)
    assert 0 < totals["accepted"] < totals["drafted"]
    assert pvalue(counts, exact) > 1e-3
