"""The strong-pair rows of the inflated benchmarks (specdec/bench/strong_pair.py,
tools/inflate/strong.py): the draft is the target's own rtn:4:64 copy (tools.draft's drafter),
it inflates and loads as a draft, and the bench lists and labels its rows. No timings."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specdec.bench import inflated, strong_pair
from tools.inflate.builder import SHAPES, Shape, Source, plan_layout
from tools.inflate.strong import STRONG_SHAPE, rounded_source, write_strong_draft

# 3 q heads on 1 KV head of 32, as SmolLM2's 9 on 3 (tests/test_inflate.py's tiny source)
SRC = dict(vocab_size=160, hidden_size=96, intermediate_size=64, num_hidden_layers=2,
           num_attention_heads=3, num_key_value_heads=1, head_dim=32, max_position_embeddings=64,
           rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
BIG = Shape(hidden=128, layers=3, heads=4, kv_heads=2, intermediate=96, head_dim=32)
GROUP = 32  # divides the tiny source's 96 and 64 inputs


def tiny_target(seed=0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**SRC)).eval()
    state = model.state_dict()
    return model, Source(model.config.to_dict(), state.__getitem__, describe="tiny")


def test_strong_source_is_the_targets_rounded_copy():
    """Every decoder linear weight is the target's rounded as tools.draft's rtn:4:GROUP drafter
    rounds it; embeddings, norms and the head are the target's own."""
    from tools.draft.drafters import TargetCopy, round_weights

    model, src = tiny_target()
    strong = rounded_source(src, 4, GROUP)
    want = TargetCopy(model, round_weights(4, GROUP)).model.state_dict()
    linears = 0
    for name, t in model.state_dict().items():
        got = strong.get(name)
        assert torch.equal(got, want[name]), name
        if name.endswith("_proj.weight"):
            linears += 1
            assert not torch.equal(got, t)  # really rounded
            assert len(torch.unique(got[0, :GROUP])) <= 16  # 4 bits per group
        else:
            assert torch.equal(got, t), name
    assert linears == 7 * SRC["num_hidden_layers"]
    assert "rtn:4:32" in strong.describe and "STRONG-PAIR" in strong.describe


def test_strong_shape_holds_the_demo_target_at_the_demo_drafts_cost():
    """SmolLM2's 30 layers fit; a drafted token multiplies as many weights (within 1%) as the
    inflated demo draft's (24 layers, 16384 output ids)."""
    smol = dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                intermediate_size=1536, num_hidden_layers=30, rms_norm_eps=1e-5)
    plan_layout(smol, SHAPES[STRONG_SHAPE])

    def per_token(s, out_rows):
        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        return s.layers * (2 * s.hidden * q + 2 * s.hidden * kv + 3 * s.hidden * s.intermediate) + out_rows * s.hidden
    ratio = per_token(SHAPES[STRONG_SHAPE], 49152) / per_token(SHAPES["inflated-draft"], 16384)
    assert 1.0 <= ratio < 1.01


def test_inflated_strong_draft_builds_and_drafts(tmp_path):
    """The tiny target's strong draft, inflated and written as the workload builder writes it,
    loads as a specdec draft: greedy output equals the target's, most drafts accepted."""
    import specdec

    model, src = tiny_target(seed=2)
    model.save_pretrained(tmp_path / "target", safe_serialization=True)
    out = write_strong_draft(tmp_path / "strong", target=src, shape=BIG, group=GROUP, progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (128, 3)
    assert "STRONG-PAIR" in cfg["inflated_from"]
    lm = specdec.load(target=str(tmp_path / "target"), draft=str(out), dtype="float32", k=3)
    got = lm.generate([3, 17, 42, 99, 5, 8], max_new_tokens=16, temperature=0.0)
    plain = model.generate(torch.tensor([[3, 17, 42, 99, 5, 8]]), max_new_tokens=16,
                           do_sample=False, pad_token_id=0)[0, 6:].tolist()
    assert got.token_ids == plain
    assert got.stats.accepted > got.stats.drafted / 2


def test_strong_rows_are_listed_labelled_and_skipped_where_no_strong_draft(tmp_path):
    from specdec.bench.report import goals, markdown_table
    from specdec.bench.runner import CONTENDERS, skip_reason
    from specdec.bench.worker import job_draft
    from specdec.bench.workloads import Workload

    rows = {c.name: c for c in CONTENDERS}
    for name, spec in strong_pair.CONTENDERS.items():
        c = rows[name]
        assert (c.kind, c.draft, c.speculation, c.draft_source) == ("specdec", True, spec, "strong")
        assert "STRONG PAIR" in c.label and strong_pair.display(name) == f"{spec} (strong pair)"
    w = Workload("w", "store", "", "demo-draft", None, 1 << 30, 64, [[1]], [0.0], 4, "off")
    assert skip_reason(w, rows["strong_chain"], None, "") == strong_pair.NOT_HERE
    assert skip_reason(w, rows["chain"], None, "") == ""
    w.drafts = {"strong": "strong-draft"}
    assert skip_reason(w, rows["strong_chain"], None, "") == ""
    wd = w.as_dict()
    assert job_draft(wd, rows["strong_chain"].__dict__) == "strong-draft"
    assert job_draft(wd, rows["chain"].__dict__) == "demo-draft"
    assert job_draft(wd, rows["self_draft"].__dict__) == "self"
    assert job_draft(wd, rows["plain"].__dict__) is None

    def row(name, ms, t=0.0):
        return {"workload": "seed-13b", "contender": name, "temperature": t, "ok": True,
                "ms_per_token": ms}
    table = [row("floor", 3000.0, None), row("chain", 2000.0), row("strong_chain", 900.0),
             row("llamacpp_spec", 3000.0)]
    md = markdown_table(table)
    assert "| chain (strong pair) |" in md and "| chain |" in md
    got = {g["goal"]: g for g in goals(table, kinds={"seed-13b": "seed-13b"})}
    assert got["speculative_vs_floor"]["value"] == pytest.approx(1.5)  # the demo draft's row
    assert got["strong_vs_floor"]["value"] == pytest.approx(3000 / 900)
    assert got["strong_vs_floor"]["met"] and not got["strong_vs_llamacpp"]["met"]  # 3.33 < 4


def test_workload_builds_the_strong_draft_but_runs_without_it(tmp_path):
    """`tools.inflate workload` writes the strong draft with the others; a workload built
    before it existed still runs, its strong rows skipped with the command that adds them."""
    from specdec.bench.inflated import inflated_files, require_built

    cache = tmp_path / "bench"
    files = inflated_files("seed-13b", cache)
    assert files["strong-draft-hf"] == cache / strong_pair.HF_DIR
    (cache / "inflated-draft-bf16").mkdir(parents=True)
    (cache / "inflated-draft-bf16" / "config.json").write_text("{}")
    files["target-gguf"].write_bytes(b"")
    require_built("seed-13b", cache)  # no strong draft: fine
    path, why = inflated.strong_draft("seed-13b", cache, q8=False)
    assert path is None and f"python -m tools.inflate workload seed-13b --cache-dir {tmp_path}" in why
    (cache / strong_pair.HF_DIR).mkdir()
    (cache / strong_pair.HF_DIR / "config.json").write_text("{}")
    assert inflated.strong_draft("seed-13b", cache, q8=False) == (str(cache / strong_pair.HF_DIR), "")
