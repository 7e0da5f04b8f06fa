"""draft_quant="q4"/"q8": a draft model run as its low-bit copy (specdec/quantized_draft.py),
packed once into the cache; the plan counts what it holds, and the target still decides every
token."""
import json
import re

import pytest
import torch

import specdec
from helpers.cli import cli_in_process
from helpers.models import make_noised_copy, make_tiny_model, sharpen_lm_head, write_borrowing_draft
from offload.encodings import Q4Weight, Q8Weight
from offload.encodings.from_float import encoded_nbytes, quantize_float
from offload.format import open_store
from specdec.load_settings import LoadSettings
from specdec.loading import open_model
from specdec.memory_plan import draft_bytes
from specdec.quantized_draft import QuantizedDraft, quantized_store_path

PROMPT = [3, 17, 42, 8, 61, 5]
ENCODED = {"q4": Q4Weight, "q8": Q8Weight}


def _pair(tmp_path):
    """A tiny target with peaked distributions, and a noised copy of it as the draft."""
    target = tmp_path / "target"
    make_tiny_model(target, "llama", eos_token_id=None)
    sharpen_lm_head(target, 8.0)
    return target, make_noised_copy(target, tmp_path / "draft", scale=0.1)


def _borrowing_draft(tmp_path, ids, tie: bool = True):
    """A draft of the target's layers that borrows the target's table and scores only `ids`:
    its output rows are copied at load out of the target's table (tied: the demo draft's
    shape) or lm_head (untied)."""
    target, _ = _pair(tmp_path)
    return target, write_borrowing_draft(target, tmp_path / "borrowing", ids, tie_word_embeddings=tie)


def _ram(model, shared=()) -> int:
    """Bytes a loaded model's weights hold: each buffer behind them once (a store's tensors are
    views into its files' page-aligned buffers), less the tensors shared with the target."""
    weights = [t for name, t in model.weights.resident.items() if name not in shared]
    weights += [t for layer in model.weights.layers() for t in layer.values()]
    storages = {}
    for w in weights:
        for t in (w.parts().values() if hasattr(w, "parts") else [w]):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("encoding", ["q4", "q8"])
def test_the_copy_is_packed_once_into_the_cache_and_holds_encoded_layers(tmp_path, encoding):
    target, draft = _pair(tmp_path)
    cache = tmp_path / "cache"
    lm = specdec.load(target, draft=draft, draft_quant=encoding, dtype="bfloat16",
                      cache_dir=cache, progress=False)
    store = quantized_store_path(draft, encoding, cache)
    assert store.parent == cache / "drafts" and open_store(store).num_layers == 3
    layer = next(iter(lm.draft.model.weights.layers()))
    assert isinstance(layer["mlp.up_proj.weight"], ENCODED[encoding])
    assert isinstance(lm.draft.model.weights.resident["lm_head.weight"], ENCODED[encoding])
    assert isinstance(layer["input_layernorm.weight"], torch.Tensor)  # norms stay plain
    assert f"as {encoding} in RAM" in lm.draft.description
    info = lm.draft_kind.info(lm.draft, lm.plan)
    assert info["encoding"] == encoding and info["path"] == str(draft)
    mtime = (store / "manifest.json").stat().st_mtime_ns if (store / "manifest.json").exists() else None
    specdec.load(target, draft=draft, draft_quant=encoding, cache_dir=cache, progress=False)
    assert sorted(p.name for p in (cache / "drafts").iterdir()) == [store.name]  # reused
    if mtime is not None:
        assert (store / "manifest.json").stat().st_mtime_ns == mtime


def test_a_changed_draft_gets_a_new_copy(tmp_path):
    _, draft = _pair(tmp_path)
    before = quantized_store_path(draft, "q4", tmp_path / "cache")
    make_noised_copy(draft, tmp_path / "retrained", scale=0.1, seed=3)
    (draft / "model.safetensors").write_bytes((tmp_path / "retrained" / "model.safetensors").read_bytes())
    assert quantized_store_path(draft, "q4", tmp_path / "cache") != before
    assert quantized_store_path(draft, "q8", tmp_path / "cache") != before


@pytest.mark.parametrize("shape", [(96, 64), (1536, 576), (576, 1536), (16384, 576),
                                   (10, 64), (96, 48), (64,)])  # the last three: kept in bf16
@pytest.mark.parametrize("encoding", ["q4", "q8"])
def test_encoded_nbytes_is_what_quantizing_makes(shape, encoding):
    made = quantize_float(torch.randn(shape), encoding) if len(shape) == 2 else None
    real = made.value.nbytes if made is not None else 2 * shape[0]
    assert encoded_nbytes(shape, encoding) == real


def test_encoded_nbytes_refuses_an_unknown_encoding():
    with pytest.raises(ValueError, match="unknown quantization 'q3'; choose one of q4, q8"):
        encoded_nbytes((64, 64), "q3")


@pytest.mark.parametrize("encoding", ["q4", "q8"])
@pytest.mark.parametrize("borrowing", [False, True])
def test_the_plan_counts_the_bytes_the_copy_takes(tmp_path, encoding, borrowing):
    if borrowing:  # output rows copied from the target's table and encoded at load
        target, draft = _borrowing_draft(tmp_path, list(range(0, 96, 2)))
    else:  # its own untied head, encoded when packed
        target, draft = _pair(tmp_path)
    lm = specdec.load(target, draft=QuantizedDraft(draft, encoding, tmp_path / "cache", False),
                      dtype="bfloat16")
    model = lm.draft.model
    shared = ("model.embed_tokens.weight",) if borrowing else ()
    if borrowing:
        assert model.weights.resident["model.embed_tokens.weight"] is \
            lm.target.model.weights.resident["model.embed_tokens.weight"]
        assert isinstance(model.head, ENCODED[encoding]) and model.head.shape == (48, 64)
    real = _ram(model, shared)
    store = open_model(quantized_store_path(draft, encoding, tmp_path / "cache"))
    assert draft_bytes(store, torch.bfloat16, head_encoding=encoding) == real
    # the tensors themselves (a tiny store's buffers are mostly page padding) against bf16
    tensors = sum(w.nbytes for layer in model.weights.layers() for w in layer.values())
    bf16 = sum(t.nbytes for layer in specdec.load(target, draft=draft).draft.model.weights.layers()
               for t in layer.values())
    assert tensors < (0.65 if encoding == "q8" else 0.4) * bf16


@pytest.mark.parametrize("speculation", ["chain", "tree"])
def test_greedy_with_a_q4_draft_equals_the_target_alone(tmp_path, speculation):
    # float32: exact comparisons (the q4 weights dequantized per call; in bf16 a many-token
    # pass and a one-token pass round differently, so the target alone parts at near-ties
    # whatever the draft, even with itself as the draft).
    target, draft = _pair(tmp_path)
    expected = specdec.load(target, dtype="float32").generate(PROMPT, max_new_tokens=32).token_ids
    # Fixed sizes: on tiny in-RAM models the cost models may rightly decide drafting does not pay.
    lm = specdec.load(target, draft=draft, draft_quant="q4", dtype="float32", speculation=speculation,
                      cache_dir=tmp_path / "cache", progress=False,
                      **({"k": 4} if speculation == "chain" else {"tree_nodes": 8}))
    assert isinstance(lm.draft.model.weights.resident["lm_head.weight"], Q4Weight)
    out = lm.generate(PROMPT, max_new_tokens=32)
    assert out.token_ids == expected
    assert out.stats.accepted > 0


def test_a_q4_draft_in_bf16_runs_on_the_int4_kernel_and_is_taken(tmp_path):
    target, draft = _pair(tmp_path)
    lm = specdec.load(target, draft=draft, draft_quant="q4", cache_dir=tmp_path / "cache",
                      progress=False, k=4)
    out = lm.generate(PROMPT, max_new_tokens=32)
    assert len(out.token_ids) == 32 and out.stats.tokens_per_pass > 1.3


def test_greedy_with_a_borrowing_q4_draft_streamed_equals_the_target_alone(tmp_path):
    target, draft = _borrowing_draft(tmp_path, [i for i in range(96) if i % 3 != 1], tie=False)
    expected = specdec.load(target, dtype="float32").generate(PROMPT, max_new_tokens=24).token_ids
    with specdec.load(target, draft=draft, draft_quant="q4", dtype="float32", ram="1GB",
                      cache_dir=tmp_path / "cache", progress=False, k=3) as lm:
        out = lm.generate(PROMPT, max_new_tokens=24)
    assert out.token_ids == expected and out.stats.accepted > 0


@pytest.mark.parametrize("settings, message", [
    ({"draft": "d", "draft_quant": "q3"}, "draft quantization 'q3' is not supported: use q4 or q8"),
    ({"draft_quant": "int4"}, "'int4' is not supported"),
    ({"target": "t", "draft_quant": "q4"}, "no draft was given"),
    ({"target": "t", "draft": "lookup", "draft_quant": "q4"}, "draft='lookup' has no weights"),
    ({"target": "t", "draft": "self", "draft_quant": "q8"}, "draft='self' has no weights"),
])
def test_bad_draft_quant_is_refused_clearly(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LoadSettings(**settings)


def test_a_missing_draft_or_a_store_is_refused_clearly(tmp_path):
    target, draft = _pair(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such draft"):
        specdec.load(target, draft=tmp_path / "nowhere", draft_quant="q4", cache_dir=tmp_path / "c")
    store = specdec.load(target, draft=draft, draft_quant="q4", cache_dir=tmp_path / "c",
                         progress=False).draft.path
    with pytest.raises(ValueError, match="is a packed store.*without draft_quant"):
        specdec.load(target, draft=store, draft_quant="q4", cache_dir=tmp_path / "c")


def test_the_cli_takes_draft_quant(tmp_path, capsys):
    target, draft = _pair(tmp_path)
    common = ("info", "--target", target, "--draft", draft, "--ram", "1GB",
              "--cache-dir", tmp_path / "cache", "--json")
    r = cli_in_process(capsys, *common, "--draft-quant", "q4")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)["draft"]
    assert info["kind"] == "model" and info["path"] == str(draft) and info["encoding"] == "q4"
    assert info["copy"].startswith(str(tmp_path / "cache" / "drafts"))
    r = cli_in_process(capsys, *common, "--draft-quant", "q5")
    assert r.returncode != 0 and "invalid choice: 'q5'" in r.stderr


def test_demo_speed_names_each_form_of_the_demo_draft():
    from specdec.demo import DEMO_DRAFT_DIR
    from tools.demo_speed import contender_settings

    assert contender_settings("chain2-q4", "store") == {
        "target": "store", "ram": "600MB", "max_context": 2048, "draft": DEMO_DRAFT_DIR,
        "draft_quant": "q4", "speculation": "chain", "k": 2}
    assert contender_settings("tree-bf16", "store")["draft"] == DEMO_DRAFT_DIR
    assert "draft_quant" not in contender_settings("tree-bf16", "store")
    for bad in ("tree2-q4", "chain-q3", "chainq4"):
        with pytest.raises(ValueError, match="contender"):
            contender_settings(bad, "store")


@pytest.mark.slow
def test_the_demo_draft_s_q4_copy_leaves_the_demo_target_pinned(tmp_path, smollm2_store):
    """Why the q4 form exists: beside it the demo target stays whole in the demo budget, where
    beside the bf16 draft it streams ~56 MB per pass (tests/test_demo_default.py)."""
    from offload.budget import Budget
    from specdec.config import ModelArgs
    from specdec.demo import DEMO_DRAFT_DIR, DEMO_MAX_CONTEXT, DEMO_RAM

    if not (DEMO_DRAFT_DIR / "config.json").exists():
        pytest.skip("needs the shipped demo draft")
    store = open_store(smollm2_store)
    args = ModelArgs.from_hf(store.config)
    draft = QuantizedDraft(DEMO_DRAFT_DIR, "q4", tmp_path / "cache", progress=False)
    plan = draft.plan(store, args, Budget(DEMO_RAM, "the demo's default"), torch.bfloat16,
                      DEMO_MAX_CONTEXT)
    assert plan.streamed == () and plan.streamed_bytes_per_pass == 0
    assert 23e6 < plan.draft_bytes < 25e6  # 75.5 MB in bf16
    with specdec.load(smollm2_store, draft=draft, ram=DEMO_RAM, max_context=DEMO_MAX_CONTEXT,
                      progress=False) as lm:
        assert lm.plan.streamed == ()
        assert _ram(lm.draft.model, ("model.embed_tokens.weight",)) == plan.draft_bytes
        out = lm.generate("The capital of France is", max_new_tokens=8)
    assert out.stats.bytes_read == 0 and out.stats.new_tokens == 8
