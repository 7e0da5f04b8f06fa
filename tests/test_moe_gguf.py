"""Qwen2-MoE / Qwen3-MoE / Mixtral GGUF files as llama.cpp writes them (merged 3-D expert
tensors, the router as ffn_gate_inp, the shared expert as *_shexp, Mixtral as a llama model with
experts): packed into a store by expert, their quantization kept, and loaded whole into RAM."""
import pytest
import torch

import specdec
from helpers.family_models import make_family_model
from helpers.moe_gguf import write_moe_gguf
from offload.format import open_store
from offload.pack import pack
from offload.prefetch import StreamedWeights
from specdec.config import ModelArgs
from specdec.families import build_model

PROMPT = [3, 17, 42, 8, 61, 5]


def store_logits(store, ids):
    args = ModelArgs.from_hf(store.config)
    with StreamedWeights(store, expert_slots=2) as weights:
        model = build_model(args, weights, torch.float32)
        return model.forward(ids, torch.arange(len(ids)), model.new_cache(32))


# llama.cpp stores no sliding window for Mixtral (released Mixtral models have none).
OVERRIDES = {"mixtral": dict(sliding_window=None)}


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe", "mixtral"])
def test_f32_gguf_packs_to_the_same_store_as_its_safetensors(tmp_path, family):
    make_family_model(tmp_path / "m", family, tie_word_embeddings=False, **OVERRIDES.get(family, {}))
    gguf = write_moe_gguf(tmp_path / "m", tmp_path / "m.gguf")
    from_gguf = open_store(pack(gguf, tmp_path / "g", dtype="float32", progress=False))
    from_st = open_store(pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False))
    assert from_gguf.has_experts and len(from_gguf.expert_extents(2)) == 8
    assert from_gguf.config["model_type"] == family
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(store_logits(from_gguf, ids), store_logits(from_st, ids))


def test_q8_gguf_keeps_its_experts_8_bit_and_the_router_plain(tmp_path):
    # Q8_0 blocks of 32: the shared expert's width must be a multiple of 32.
    make_family_model(tmp_path / "m", "qwen2_moe", tie_word_embeddings=False,
                      shared_expert_intermediate_size=64)
    gguf = write_moe_gguf(tmp_path / "m", tmp_path / "m.gguf", linear_type="Q8_0")
    store = open_store(pack(gguf, tmp_path / "g", dtype="float32", progress=False))
    assert {t.dtype for t in store.expert_extents(0)[5].tensors.values()} == {"q8"}
    dense = store.layer_tensors(0)
    assert dense["mlp.gate.weight"].dtype == "float32" and dense["mlp.shared_expert_gate.weight"].shape == (1, 64)
    assert dense["mlp.shared_expert.up_proj.weight"].dtype == "q8"
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(3))
    exact = open_store(pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False))
    assert (store_logits(store, ids) - store_logits(exact, ids)).abs().mean() < 0.05


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_a_moe_gguf_loads_whole_into_ram(tmp_path, family):
    make_family_model(tmp_path / "m", family, tie_word_embeddings=False, **OVERRIDES.get(family, {}))
    gguf = write_moe_gguf(tmp_path / "m", tmp_path / "m.gguf")
    want = specdec.load(tmp_path / "m", dtype="float32").generate(PROMPT, max_new_tokens=10).token_ids
    assert specdec.load(gguf, dtype="float32").generate(PROMPT, max_new_tokens=10).token_ids == want


@pytest.fixture
def two_threads():
    """torch on 2 intra-op threads for the test (conftest's 1 restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def store_bytes(store_dir):
    return {p.relative_to(store_dir): p.read_bytes() for p in sorted(store_dir.rglob("*")) if p.is_file()}


def test_a_pack_runs_on_one_thread_restores_the_callers_and_writes_the_same_store(
        tmp_path, monkeypatch, two_threads):
    import contextlib

    from offload import pack as pack_module

    make_family_model(tmp_path / "m", "qwen2_moe", tie_word_embeddings=False,
                      shared_expert_intermediate_size=64)
    gguf = write_moe_gguf(tmp_path / "m", tmp_path / "m.gguf", linear_type="Q8_0")
    seen, write_store = [], pack_module.write_store

    def recording(*args, **kwargs):  # the tensors are read, converted and written in here
        seen.append(torch.get_num_threads())
        return write_store(*args, **kwargs)

    monkeypatch.setattr(pack_module, "write_store", recording)
    one = pack(gguf, tmp_path / "one", progress=False)
    assert seen == [1] and torch.get_num_threads() == 2
    monkeypatch.setattr(pack_module, "one_thread", contextlib.nullcontext)  # as before: 2 threads
    two = pack(gguf, tmp_path / "two", progress=False)
    assert seen == [1, 2]
    assert store_bytes(one) == store_bytes(two)


def test_a_failed_pack_restores_the_callers_threads(tmp_path, two_threads):
    from offload.checkpoint import CheckpointError

    make_family_model(tmp_path / "m", "qwen3_moe", tie_word_embeddings=False)
    data = write_moe_gguf(tmp_path / "m", tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError):
        pack(tmp_path / "cut.gguf", tmp_path / "store", progress=False)
    assert torch.get_num_threads() == 2
