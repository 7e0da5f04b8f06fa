"""The draft -> GGUF writer (llama.cpp's speculative contender): read back by transformers'
GGUF loader (which undoes llama.cpp's q/k permutation), the GGUF computes the same logits as
the HF draft, and a partial output vocabulary becomes a full output layer whose other rows
are 0."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers.models import make_tiny_chat_model

pytestmark = pytest.mark.slow  # transformers reading 49,152-token GGUF drafts

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_scaling=None, tie_word_embeddings=False)


def test_gguf_equals_the_hf_draft(tmp_path, smollm2_tokenizer_dir, smollm2_gguf):
    from transformers import AutoModelForCausalLM

    from specdec.bench.draft_gguf import write_draft_gguf

    model = make_tiny_chat_model(tmp_path / "d", smollm2_tokenizer_dir, **TINY)
    out = write_draft_gguf(tmp_path / "d", tmp_path / "d.gguf", smollm2_gguf)
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name,
                                                dtype=torch.float32).eval()
    ids = torch.tensor([[1, 17, 420, 9000, 5, 333]])
    with torch.no_grad():
        want, got = model(ids).logits, back(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)  # F16 weights
    assert got[0, -1].argmax() == want[0, -1].argmax()


def test_partial_output_vocabulary_becomes_zero_rows(tmp_path, smollm2_tokenizer_dir, smollm2_gguf):
    import gguf

    from specdec.bench.draft_gguf import write_draft_gguf

    make_tiny_chat_model(tmp_path / "d", smollm2_tokenizer_dir, **TINY)
    state = load_file(str(tmp_path / "d" / "model.safetensors"))
    keep = torch.tensor([3, 50, 700, 49151], dtype=torch.int32)
    rows = state["lm_head.weight"][keep.long()].clone()
    state["lm_head.weight"], state["lm_head.token_ids"] = rows, keep
    save_file(state, str(tmp_path / "d" / "model.safetensors"), metadata={"format": "pt"})
    out = write_draft_gguf(tmp_path / "d", tmp_path / "d.gguf", smollm2_gguf)
    head = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == "output.weight")
    full = torch.from_numpy(head.data.astype("float32")).reshape(49152, 64)
    torch.testing.assert_close(full[keep.long()], rows.float(), rtol=0, atol=1e-3)
    others = torch.ones(49152, dtype=torch.bool)
    others[keep.long()] = False
    assert full[others].abs().max() == 0


def test_rope_scaling_is_refused(tmp_path, smollm2_tokenizer_dir, smollm2_gguf):
    from specdec.bench.draft_gguf import DraftGGUFError, write_draft_gguf

    make_tiny_chat_model(tmp_path / "d", smollm2_tokenizer_dir,
                         **{**TINY, "rope_scaling": None})
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DraftGGUFError, match="rope scaling"):
        write_draft_gguf(tmp_path / "d", tmp_path / "d.gguf", smollm2_gguf)
