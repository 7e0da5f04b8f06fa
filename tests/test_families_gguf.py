"""Gemma 2 / Gemma 3 / Phi-3 GGUF files written as llama.cpp writes them (tests/helpers/family_gguf.py)
load to the logits of the transformers model they came from: packed into a store (gguf-py's
reader, offload/gguf_source.py) and loaded whole (the same reader, dequantized to float32)."""
import pytest
import torch

import specdec
from helpers.family_gguf import write_family_gguf
from helpers.family_models import make_family_model
from offload.pack import pack

IDS = torch.randint(0, 96, (24,), generator=torch.Generator().manual_seed(7))
# llama.cpp stores no query_pre_attn_scalar (it uses head_dim below 27B) and no Gemma 3 layer
# pattern (it uses 5 local : 1 global): the models here follow those rules, as released ones do.
GGUF_VARIANTS = {
    "gemma2": dict(query_pre_attn_scalar=16),
    "gemma3": dict(query_pre_attn_scalar=16, num_hidden_layers=6, layer_types=None),
    "phi3": {},
    "phi3-longrope": {},
}


def forward(lm) -> torch.Tensor:
    model = lm.target.model
    return model.forward(IDS, torch.arange(len(IDS)), model.new_cache(32))


@pytest.fixture(params=sorted(GGUF_VARIANTS))
def gguf_model(request, tmp_path):
    ref = make_family_model(tmp_path / "hf", request.param, **GGUF_VARIANTS[request.param])
    with torch.no_grad():
        expected = ref(IDS[None]).logits[0]
    return tmp_path, expected


def test_gguf_packed_and_loaded_whole_equal_transformers(gguf_model):
    tmp_path, expected = gguf_model
    gguf = write_family_gguf(tmp_path / "hf", tmp_path / "model.gguf")
    store = pack(gguf, tmp_path / "store", dtype="float32", progress=False)
    with specdec.load(store, dtype="float32") as lm:
        assert (forward(lm) - expected).abs().max() <= 1e-4
    with specdec.load(gguf, dtype="float32") as lm:
        assert (forward(lm) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("variant", ["gemma3", "phi3"])
def test_gguf_q8_weights_stay_8_bit_in_the_store(tmp_path, variant):
    from offload.checkpoint import open_checkpoint

    ref = make_family_model(tmp_path / "hf", variant, **GGUF_VARIANTS[variant])
    gguf = write_family_gguf(tmp_path / "hf", tmp_path / "model.gguf", linear_type="Q8_0")
    store = pack(gguf, tmp_path / "store", dtype="float32", progress=False)
    stored = dict(open_checkpoint(store).tensors())
    fused = "self_attn.qkv_proj.weight" if variant == "phi3" else "self_attn.q_proj.weight"
    assert not isinstance(stored[f"model.layers.0.{fused}"], torch.Tensor)  # an 8-bit encoding
    assert isinstance(stored["model.layers.0.input_layernorm.weight"], torch.Tensor)
    with specdec.load(store, dtype="float32") as lm:
        got = forward(lm)
    with specdec.load(gguf, dtype="float32") as lm:  # gguf-py's float32 dequantization
        dequantized = forward(lm)
    print("q8 store vs dequantized GGUF:", float((got - dequantized).abs().max()))
    assert (got - dequantized).abs().max() <= 1e-4
    with torch.no_grad():
        expected = ref(IDS[None]).logits[0]
    assert (got - expected).abs().max() <= 0.2  # Q8_0's rounding of the float32 model
