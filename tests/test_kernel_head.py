"""A tied Q8_0 table with float32 scales (SmolLM2's, the demo target's) as the output layer:
the model holds a copy with the kernel's bf16 scales, made once at load, so no pass converts
them (specdec/compute/head.py); the logits are those of the table itself, bit for bit, and
the RAM plan counts what the copy adds."""
import pytest
import torch

import specdec
from helpers.tiny_llama_gguf import tiny_gguf
from offload import pack as pack_module
from offload.budget import DEFAULT_OVERHEAD
from offload.encodings.q4 import Q4Weight
from offload.encodings.q8 import Q8Weight
from offload.format import open_store
from specdec.compute.head import kernel_head, kernel_head_added_nbytes, kernel_head_nbytes
from specdec.model import linear

EMBED = "model.embed_tokens.weight"


@pytest.fixture
def store(tmp_path, monkeypatch):
    # no tokenizer export (transformers would parse the tiny GGUF's vocabulary)
    monkeypatch.setattr(pack_module, "copy_tokenizer", lambda ckpt, target: False)
    out = tmp_path / "store"
    pack_module.pack(tiny_gguf(tmp_path / "tiny.gguf"), out, progress=False, note=lambda m: None)
    return out


def _model(store, dtype="bfloat16"):
    return specdec.load(store, ram="1GB", dtype=dtype, max_context=64, progress=False)


def test_the_output_layer_holds_bf16_scales_and_shares_the_table_s_bytes(store):
    lm = _model(store)
    model = lm.target.model
    table = model.weights.resident[EMBED]
    assert isinstance(table, Q8Weight) and table.hi.scales_zeros.dtype == torch.float32  # exact lookups
    head = model.head
    assert isinstance(head, Q8Weight) and head is not table
    for plane in ("hi", "lo"):
        ours, theirs = getattr(head, plane), getattr(table, plane)
        assert ours.scales_zeros.dtype == torch.bfloat16
        assert torch.equal(ours.scales_zeros, theirs.scales_zeros.to(torch.bfloat16))
        assert ours.packed.data_ptr() == theirs.packed.data_ptr()  # no copy of the codes
    assert kernel_head(table, torch.bfloat16) is head  # one copy per table (a borrowing draft shares it)


def test_no_pass_hands_the_kernel_float32_scales(store, monkeypatch):
    lm = _model(store)
    seen = []
    original = Q4Weight.linear

    def recording(self, x, bias=None):
        seen.append(self.scales_zeros.dtype)
        return original(self, x, bias)

    monkeypatch.setattr(Q4Weight, "linear", recording)
    out = lm.generate([1, 2, 3, 4], max_new_tokens=8)
    assert len(out.token_ids) == 8 and seen
    assert set(seen) == {torch.bfloat16}  # before: the output layer's two planes converted per pass


def test_the_logits_are_the_table_s_bit_for_bit(store):
    model = _model(store).target.model
    table = model.weights.resident[EMBED]
    x = torch.randn(5, table.shape[1]).to(torch.bfloat16)
    assert torch.equal(linear(x, model.head), linear(x, table))
    tokens = torch.tensor([5, 9, 17, 3, 120, 44])
    logits = []
    for head in (model.head, table):
        model.head = head
        cache = model.new_cache(16)
        logits.append(model.forward(tokens, cache.next_positions(tokens.numel()), cache))
    assert torch.equal(logits[0], logits[1])


def test_float32_keeps_the_table_itself(store):
    model = _model(store, "float32").target.model
    assert model.head is model.weights.resident[EMBED]  # the exact path dequantizes its float32 scales
    assert kernel_head_nbytes(open_store(store), torch.float32) == 0
    assert kernel_head_added_nbytes(open_store(store), torch.float32) == 0


def test_the_plan_counts_what_the_copy_adds(store):
    lm = _model(store)
    head = lm.target.model.head
    planes = [head.hi.scales_zeros.nbytes, head.lo.scales_zeros.nbytes]
    assert kernel_head_nbytes(open_store(store), torch.bfloat16) == sum(planes)
    # one plane's conversion was allocated per call inside the runtime reserve before
    added = kernel_head_added_nbytes(open_store(store), torch.bfloat16)
    assert added == sum(planes) - max(planes) > 0
    assert lm.plan.overhead_bytes == DEFAULT_OVERHEAD + added
