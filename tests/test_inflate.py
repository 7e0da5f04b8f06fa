"""The inflation is exact: a tiny random Llama inflated to a bigger tiny shape gives the same
greedy tokens and (float32) logits, through transformers and through specdec's loader; the
GGUF writer copies the source's quantized blocks (read back with gguf's own reader)."""
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.tiny_llama_gguf import tiny_gguf
from tools.inflate.builder import (CHUNK, InflateError, Shape, Source, plan_layout, write_gguf,
                                   write_hf)

# 3 q heads on 1 KV head -> 8 heads on 4 KV slots of 2: one padded q head shares a real KV
# head (live), two KV slots are padding (dead heads): every case of the layout.
SRC = dict(vocab_size=160, hidden_size=96, intermediate_size=64, num_hidden_layers=2,
           num_attention_heads=3, num_key_value_heads=1, head_dim=32, max_position_embeddings=64,
           rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
BIG = Shape(hidden=256, layers=5, heads=8, kv_heads=4, intermediate=160, head_dim=32)
PROMPT = torch.tensor([[3, 17, 42, 99, 5, 8]])


def tiny_source(tied=True, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**SRC, "tie_word_embeddings": tied})
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm weights, so their scaling is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    state = model.state_dict()
    return model, Source(cfg.to_dict(), state.__getitem__, describe="tiny")


def greedy(model, n=12):
    out = model.generate(PROMPT, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, PROMPT.shape[1]:].tolist()


@pytest.fixture(scope="module", params=[0.02, 0.0], ids=["noise", "zeros"])
def inflated(request, tmp_path_factory):
    model, src = tiny_source()
    out = write_hf(src, BIG, tmp_path_factory.mktemp("inf") / "big", dtype=torch.float32,
                   noise_std=request.param, progress=False)
    return model, out, request.param


def test_layout_places_every_source_unit_once():
    layout = plan_layout(SRC, BIG)
    for space, n in ((layout.hidden, 96), (layout.inter, 64), (layout.q, 3 * 32)):
        real = space.src[space.src >= 0]
        assert sorted(real.tolist()) == list(range(n))
    assert sorted(layout.layer_of[layout.layer_of >= 0].tolist()) == [0, 1]
    assert layout.q.live.sum() == 32  # one padded head on a real KV slot
    # each real q head sits on a KV slot holding its own source KV head
    heads = layout.q.src.reshape(8, 32)[:, 0] // 32
    for h, src_head in enumerate(heads):
        if src_head >= 0:
            assert layout.kv_of_q[h // 2] == src_head // 3


def test_impossible_shapes_are_refused():
    with pytest.raises(InflateError, match="KV slots"):
        # two source KV heads cannot share the one KV head of the new shape
        plan_layout({**SRC, "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2},
                    Shape(hidden=256, layers=5, heads=8, kv_heads=1, intermediate=160, head_dim=32))
    with pytest.raises(InflateError, match="head_dim"):
        plan_layout(SRC, Shape(hidden=512, layers=5, heads=8, kv_heads=8, intermediate=160, head_dim=64))
    with pytest.raises(InflateError, match="multiples"):
        plan_layout(SRC, Shape(hidden=256, layers=5, heads=8, kv_heads=4, intermediate=150, head_dim=32))


def test_inflated_equals_source_in_transformers(inflated):
    model, out, noise = inflated
    big = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    assert big.config.hidden_size == 256 and big.config.num_hidden_layers == 5
    with torch.no_grad():
        want, got = model(PROMPT).logits, big(PROMPT).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert greedy(big) == greedy(model)


def test_inflated_equals_source_in_specdec(inflated):
    import specdec

    model, out, _ = inflated
    lm = specdec.load(target=str(out), dtype="float32")
    got = lm.generate(PROMPT[0].tolist(), max_new_tokens=12, temperature=0.0).token_ids
    assert got == greedy(model)


def test_noise_fills_the_padding(inflated):
    from safetensors import safe_open

    _, out, noise = inflated
    if not noise:
        pytest.skip("zero padding")
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                 "model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight"):
        with safe_open(str(out / index[name]), "pt") as f:
            w = f.get_tensor(name)
        zero = (w.reshape(-1) == 0).numpy()
        assert 0 < zero.mean() < 0.7, name  # the zeros the construction needs, no more
        assert longest_run(zero) <= 2 * CHUNK, name  # and never a long run


def longest_run(flags: np.ndarray) -> int:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def test_untied_source_and_identity_layers(tmp_path):
    model, src = tiny_source(tied=False, seed=1)
    out = write_hf(src, BIG, tmp_path / "big", dtype=torch.float32, progress=False)
    big = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(big(PROMPT).logits, model(PROMPT).logits, rtol=1e-5, atol=1e-5)


def test_refuses_existing_output_and_full_disk(tmp_path):
    _, src = tiny_source()
    (tmp_path / "big").mkdir()
    with pytest.raises(InflateError, match="exists"):
        write_hf(src, BIG, tmp_path / "big", progress=False)
    with pytest.raises(InflateError, match="free"):
        write_hf(src, BIG, tmp_path / "other", keep_free=1 << 60, progress=False)


def test_gguf_real_part_is_the_source(tmp_path):
    import gguf
    from gguf.quants import dequantize

    src = gguf.GGUFReader(str(tiny_gguf(tmp_path / "tiny.gguf")))
    out = write_gguf(tmp_path / "tiny.gguf", BIG, tmp_path / "big.gguf", progress=False)
    big = gguf.GGUFReader(str(out))
    assert big.fields["llama.embedding_length"].contents() == 256
    assert big.fields["tokenizer.ggml.tokens"].contents()[:3] == ["t0", "t1", "t2"]
    assert big.fields["llama.attention.layer_norm_rms_epsilon"].contents() == pytest.approx(1e-5 * 96 / 256)
    s, b = {t.name: t for t in src.tensors}, {t.name: t for t in big.tensors}
    layout = plan_layout({**SRC, "tie_word_embeddings": True}, BIG)

    def deq(t):
        return dequantize(np.asarray(t.data), t.tensor_type).reshape(t.data.shape[0], -1)

    hid = layout.hidden.src >= 0
    # the embedding: real columns equal the source, padded columns exactly 0
    e = deq(b["token_embd.weight"])
    np.testing.assert_array_equal(e[:, hid], deq(s["token_embd.weight"])[:, layout.hidden.src[hid]])
    assert not e[:, ~hid].any()
    np.testing.assert_array_equal(deq(b["output.weight"])[:, hid], deq(s["token_embd.weight"]))
    for i, src_layer in enumerate(layout.layer_of):
        if src_layer < 0:
            continue
        down = deq(b[f"blk.{i}.ffn_down.weight"])
        inter = layout.inter.src >= 0
        np.testing.assert_array_equal(down[np.ix_(hid, inter)], deq(s[f"blk.{src_layer}.ffn_down.weight"]))
        assert not down[np.ix_(~hid, inter)].any()  # writes no padded residual dim
        q = deq(b[f"blk.{i}.attn_q.weight"])
        real_q = layout.q.src >= 0
        np.testing.assert_array_equal(q[np.ix_(real_q, hid)],
                                      deq(s[f"blk.{src_layer}.attn_q.weight"])[layout.q.src[real_q]])
        norm = np.asarray(b[f"blk.{i}.attn_norm.weight"].data)
        np.testing.assert_allclose(norm[hid], np.asarray(s[f"blk.{src_layer}.attn_norm.weight"].data)
                                   * np.sqrt(96 / 256), rtol=1e-6)
    assert len(big.tensors) == 2 + 9 * BIG.layers + 1


def test_layer_by_layer_check_matches_the_model():
    """The builder's real-size check (teacher forcing, one layer at a time) on a tiny model."""
    from tools.inflate.builder import inflate_tensors, inflated_config
    from tools.inflate.check import teacher_forced_logits

    model, src = tiny_source()
    seq = PROMPT[0]
    got = teacher_forced_logits(inflate_tensors(src, BIG), inflated_config(src.config, BIG, torch.float32, ""), [seq])
    with torch.no_grad():
        torch.testing.assert_close(got[0], model(PROMPT).logits[0], rtol=1e-5, atol=1e-5)


def test_inflated_partial_vocabulary_draft_drafts_the_same(tmp_path):
    """A draft with a partial output vocabulary (lm_head.token_ids, as the demo draft) inflated:
    speculation with it accepts exactly what the original draft got accepted."""
    import specdec
    from safetensors.torch import save_file

    target, _ = tiny_source(seed=2)
    target.save_pretrained(tmp_path / "target", safe_serialization=True)
    draft_model, _ = tiny_source(seed=2)  # the target itself, scoring half the vocabulary
    state = {k: v.clone() for k, v in draft_model.state_dict().items() if k != "lm_head.weight"}
    state["lm_head.token_ids"] = torch.arange(0, 160, 2, dtype=torch.int32)
    (tmp_path / "draft").mkdir()
    save_file(state, str(tmp_path / "draft" / "model.safetensors"))
    (tmp_path / "draft" / "config.json").write_text(json.dumps({**draft_model.config.to_dict(), "model_type": "llama"}))
    src = Source(draft_model.config.to_dict(), state.__getitem__, output_ids=state["lm_head.token_ids"])
    big = write_hf(src, BIG, tmp_path / "draft-big", dtype=torch.float32, progress=False)
    runs = []
    for draft in (tmp_path / "draft", big):
        lm = specdec.load(target=str(tmp_path / "target"), draft=str(draft), dtype="float32", k=3)
        out = lm.generate(PROMPT[0].tolist(), max_new_tokens=16, temperature=0.0)
        runs.append((out.token_ids, out.stats.drafted, out.stats.accepted))
    assert runs[0] == runs[1]
    assert runs[0][2] > 0  # some drafts were accepted: the comparison means something


def test_the_bench_names_the_command_that_builds_a_missing_inflated_workload(tmp_path, capsys):
    """The inflater is tooling (tools/inflate), not the runtime: the bench does not build the
    big models, it says how."""
    import re

    from specdec.bench.inflated import WorkloadError, big_workload
    from tools.inflate.cli import main

    command = f"python -m tools.inflate workload seed-13b --cache-dir {tmp_path}"
    with pytest.raises(WorkloadError, match=re.escape(command)):
        big_workload("seed-13b", tmp_path / "bench")
    assert main(["workload", "no-such-workload"]) == 2
    assert "unknown workload 'no-such-workload'" in capsys.readouterr().err
