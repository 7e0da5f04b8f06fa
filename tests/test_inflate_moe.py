"""The synthetic mixture-of-experts workload (tools/inflate/moe.py) on a tiny shape: its experts
are paired halves of the inflated dense MLP, so its logits are the dense inflation's whichever
experts the router picks; its routing statistics come out of the report command's code."""
import json

import numpy as np
import pytest
import torch

import specdec
from offload.format import open_store
from offload.pack import pack
from offload.prefetch import StreamedWeights
from specdec.config import ModelArgs
from specdec.families import build_model
from helpers.tiny_llama_gguf import tiny_gguf
from tools.inflate import moe as moe_builder
from tools.inflate.builder import InflateError, Shape, write_gguf
from tools.inflate.moe import MoeShape, write_moe_gguf
from tools.inflate.moe_routing import report_text, routing_report

DENSE = Shape(hidden=256, layers=5, heads=8, kv_heads=4, intermediate=64, head_dim=32)
SHAPE = MoeShape(DENSE, experts=8, routed=4)
IDS = torch.tensor([3, 17, 42, 99, 5, 8, 11, 140, 77, 2])


def store_logits(path, out, slots=4):
    store = open_store(pack(path, out, dtype="float32", progress=False))
    args = ModelArgs.from_hf(store.config)
    with StreamedWeights(store, expert_slots=slots) as weights:
        model = build_model(args, weights, torch.float32)
        return model.forward(IDS, torch.arange(len(IDS)), model.new_cache(16)), store


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("inflate_moe")
    tiny_gguf(d / "tiny.gguf")
    write_moe_gguf(d / "tiny.gguf", SHAPE, d / "moe.gguf", progress=False)
    write_gguf(d / "tiny.gguf", DENSE, d / "dense.gguf", progress=False)
    return d


@pytest.mark.filterwarnings("ignore:.*tokenizer")
def test_the_moe_gives_the_dense_inflations_logits(built):
    moe, store = store_logits(built / "moe.gguf", built / "moe-store")
    dense, _ = store_logits(built / "dense.gguf", built / "dense-store")
    assert store.config["model_type"] == "mixtral" and len(store.expert_extents(0)) == 8
    assert store.config["num_experts_per_tok"] == 4 and store.config["intermediate_size"] == 32
    assert (moe - dense).abs().max() <= 1e-5 * dense.abs().max()
    assert torch.equal(moe.argmax(-1), dense.argmax(-1))


@pytest.mark.filterwarnings("ignore:.*tokenizer")
def test_without_doubled_down_projections_the_answers_change(built, monkeypatch):
    monkeypatch.setattr(moe_builder, "double_blocks", lambda data, qtype: data)
    write_moe_gguf(built / "tiny.gguf", SHAPE, built / "undoubled.gguf", progress=False)
    wrong, _ = store_logits(built / "undoubled.gguf", built / "undoubled-store")
    dense, _ = store_logits(built / "dense.gguf", built / "dense-store2")
    assert (wrong - dense).abs().max() > 1e-3


def test_router_rows_come_in_identical_pairs_over_the_real_dims(built):
    import gguf

    reader = gguf.GGUFReader(str(built / "moe.gguf"))
    t = {x.name: x for x in reader.tensors}
    router = np.asarray(t["blk.1.ffn_gate_inp.weight"].data)
    assert router.shape == (8, 256)
    np.testing.assert_array_equal(router[0::2], router[1::2])
    assert len({router[i].tobytes() for i in range(0, 8, 2)}) == 4 and (router != 0).sum(1).max() == 96
    assert reader.fields["llama.expert_count"].contents() == 8
    assert "SYNTHETIC" in reader.fields["general.synthetic_moe"].contents()
    down = np.asarray(t["blk.1.ffn_down_exps.weight"].data)
    np.testing.assert_array_equal(down[0], down[2])  # every even expert: the first half
    assert not np.array_equal(down[0], down[1])


def test_impossible_moe_shapes_are_refused(tmp_path):
    tiny_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(InflateError, match="must be even"):
        write_moe_gguf(tmp_path / "tiny.gguf", MoeShape(DENSE, 7, 2), tmp_path / "a.gguf", progress=False)
    with pytest.raises(InflateError, match="source's 64"):
        bad = MoeShape(Shape(hidden=256, layers=5, heads=8, kv_heads=4, intermediate=128, head_dim=32), 8, 2)
        write_moe_gguf(tmp_path / "tiny.gguf", bad, tmp_path / "b.gguf", progress=False)


@pytest.mark.filterwarnings("ignore:.*tokenizer")
def test_routing_report_counts_a_tokens_paired_experts(built):
    store = pack(built / "moe.gguf", built / "routing-store", dtype="float32", progress=False)
    with specdec.load(store, dtype="float32", ram=10**9, max_context=64) as lm:
        report = routing_report(lm, [[3, 17, 42, 99], [5, 8, 11]], new_tokens=8, pass_sizes=(1, 2, 4))
    m = report["mean"]
    assert [r["tokens"] for r in report["runs"]] == [4 + 7, 3 + 7]  # the last token is not fed
    assert m["distinct_per_pass"][1] == 4  # 4 routed: 2 pairs, every token
    assert 4 <= m["distinct_per_pass"][4] <= 8 and m["independent"][1] == 4
    text = report_text(report)
    assert "published for Qwen3-30B-A3B" in text and "T  distinct/layer" in text
    assert report_text(json.loads(json.dumps(report))) == text  # as moe_bench.sh reads it back


def test_the_moe_bench_worker_reports_bytes_and_expert_figures(tmp_path):
    """The benchmark's child (in this process; the timings are not checked): bytes per token
    from /proc, the expert figures, the ISA; the table prints a row per contender."""
    from helpers.family_models import make_family_model
    from helpers.moe_budget import minimum_ram
    from tools.inflate.moe_bench import raw_expert_read, table, worker

    make_family_model(tmp_path / "m", "qwen3_moe", eos_token_id=None)
    store = pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False)
    job = {"store": str(store), "ram": minimum_ram(store) + 100_000, "max_context": 64, "prompts": [[3, 17, 42], [5, 9]],
           "tokens": 6, "settings": {"expert_reads": "page-cache"}}
    row = worker(job)
    assert row["tokens"] == 12 and row["isa"] and row["experts_per_layer_pass"] >= 2
    # each prompt's decode apart from its prefill pass: 5 one-token passes after it, 2 experts each
    d = row["decode"]
    assert d["tokens"] == d["passes"] == 10 and d["experts_per_layer_pass"] == 2
    assert row["passes"] == 12 and [len(g["token_ids"]) for g in row["greedy"]] == [6, 6]
    assert row["bytes_read_per_token"] >= 0 and "expert buffers" in row["plan"]
    text = table([{"contender": "plain-page-cache", "peak_cgroup_bytes": None, **row},
                  {"contender": "chain-direct", "error": "exit -9 (OOM-killed?)"}], raw_expert_read(store))
    assert "plain-page-cache | " in text and "chain-direct | failed: exit -9" in text


def test_the_moe_bench_byte_model_and_the_chat_row(tmp_path):
    """The decode's bytes beside what its passes would read with no expert cache (the dense
    parts not pinned + each routed expert) and what the source asked for; the chat row runs the
    prompts as turns of one conversation, the caches kept, each turn's decode apart."""
    from helpers.family_models import make_family_model
    from helpers.moe_budget import minimum_ram
    from tools.inflate.moe_bench import ideal_bytes, raw_expert_read, table, worker

    make_family_model(tmp_path / "m", "qwen3_moe", eos_token_id=None)
    store = pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False)
    job = {"store": str(store), "ram": minimum_ram(store) + 100_000, "max_context": 64,
           "prompts": [[3, 17, 42], [5, 9], [7]], "tokens": 5, "settings": {}}
    row = worker(job)
    model, d = row["byte_model"], row["decode"]
    assert model["expert_extent_bytes"] > 0
    src = row["source_counters"]
    assert d["ideal_cold_bytes"] >= d["asked_bytes"] > 0  # the cache can only save reads
    assert ideal_bytes(model, {"passes": 2, "source": {"experts_used": 3, "expert_bytes_read": 5}}) == {
        "ideal_cold_bytes": 2 * model["dense_streamed_bytes_per_pass"] + 3 * model["expert_extent_bytes"],
        "asked_bytes": 2 * model["dense_streamed_bytes_per_pass"] + 5}
    assert src["experts_used"] > 0
    chat = worker({**job, "settings": {"chat": True}})
    turns = chat["turns"]
    assert len(turns) == 3 and chat["tokens"] == sum(t["tokens"] for t in turns) == 15
    # the second turn prefills only its own prompt: the first turn's prompt and reply are cached
    assert [t["prompt_tokens"] for t in turns] == [3, 3 + 5 + 2, 3 + 5 + 2 + 5 + 1]
    assert all(t["decode"]["tokens"] == 4 and "expert_hit_rate" in t["decode"] for t in turns)
    assert chat["later_turns_decode"]["tokens"] == 8 and chat["decode"]["tokens"] == 12
    assert 0 <= chat["expert_hit_rate"] <= 1
    text = table([{"contender": "chat-direct", "peak_cgroup_bytes": None, **chat},
                  {"contender": "plain-direct", "peak_cgroup_bytes": None, **row}], raw_expert_read(store))
    assert "  turn 2: 10 prompt tokens, 4 decoded" in text and "chat-direct | " in text
