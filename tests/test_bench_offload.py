"""Smoke test of `specdec bench offload` (the report, not the speed): a tiny INFLATED pair (a
tiny random source inflated to a bigger tiny shape by tools/inflate/builder.py, as the 7B/13B
workloads are; its draft a noised copy of the source), every contender in its own process
under the cap, the report complete and sane.

The llama.cpp contenders run where llama_cpp imports (this interpreter, or the one named by
$SPECDEC_LLAMA_PYTHON) and are skipped with one clear line elsewhere (CI's venv).
One run of the whole benchmark (~8 subprocesses) is shared by the assertions below."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from helpers.models import make_noised_copy, make_tiny_chat_model, sharpen_lm_head
from specdec.bench import strong_pair

pytestmark = pytest.mark.slow  # the offload benchmark's ~8 subprocesses

STREAMED = {"plain", "chain", "tree", "overlap"}
LLAMA = {"llamacpp", "llamacpp_spec"}
# source: 2 q heads on 1 KV head of 32 -> 4 heads on 2 KV slots; 2 layers -> 3
SOURCE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, head_dim=32, rope_scaling=None, tie_word_embeddings=False)


def contender_names() -> set[str]:
    from specdec.bench.runner import CONTENDERS

    return {c.name for c in CONTENDERS}


def inflate_tiny(source_dir, out_dir, tokenizer_dir):
    """The saved tiny source inflated (float32) to a bigger tiny shape, tokenizer beside it."""
    from safetensors.torch import load_file

    from tools.inflate.builder import Shape, Source, write_hf

    cfg = json.loads((source_dir / "config.json").read_text())
    state = load_file(str(source_dir / "model.safetensors"))
    if "lm_head.weight" not in state:  # tied: the same table
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    big = Shape(hidden=128, layers=3, heads=4, kv_heads=2, intermediate=256, head_dim=32)
    write_hf(Source(cfg, state.__getitem__, describe="tiny"), big, out_dir, torch.float32,
             progress=False)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out_dir / f.name)
    return out_dir
FIELDS = ("ms_per_token", "tokens_per_second", "bytes_read_per_token", "peak_rss_bytes",
          "tokens_per_pass")


@pytest.fixture(scope="module")
def bench(tmp_path_factory, smollm2_tokenizer_dir):
    """`specdec bench offload --quick --target T --draft D` on a tiny random pair with the
    SmolLM2 tokenizer (real text), float32 (exact greedy equality), every layer streamed."""
    from specdec.cli import main

    root = tmp_path_factory.mktemp("bench")
    source = root / "source"
    make_tiny_chat_model(source, smollm2_tokenizer_dir, seed=0, **SOURCE)
    sharpen_lm_head(source, 8.0)  # peaked distributions: greedy choices are not near-ties
    draft = make_noised_copy(source, root / "draft", scale=0.05, seed=1)
    target = inflate_tiny(source, root / "target", smollm2_tokenizer_dir)
    out = root / "out"
    llama = ["--llama-python", os.environ["SPECDEC_LLAMA_PYTHON"]] \
        if os.environ.get("SPECDEC_LLAMA_PYTHON") else []
    rc = main(["bench", "offload", "--quick", "--target", str(target), "--draft", str(draft),
               "--ram", "1.5GB", "--dtype", "float32", "--stream-all", "--threads", "1",
               "--max-new-tokens", "12", "--out", str(out), "--cache-dir", str(root / "cache"),
               *llama])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    paths = {k: out / n for k, n in (("json", "report.json"), ("markdown", "report.md"),
                                     ("ms_per_token_png", "ms_per_token.png"),
                                     ("pass_time_png", "pass_time.png"))}
    return report, paths


def test_every_contender_ran_and_files_written(bench):
    report, paths = bench
    results = report["workloads"][0]["results"]
    assert set(results) == contender_names()
    failed = {k: r.get("error", "") + r.get("log_tail", "") for k, r in results.items()
              if not r["ok"] and not r.get("skipped")}
    assert not failed, failed
    skipped = {k for k, r in results.items() if r.get("skipped")} - {"self_draft"}  # --stream-all
    strong = set(strong_pair.CONTENDERS)  # the strong pair exists for the inflated workloads only
    assert skipped - strong <= LLAMA, skipped  # only llama.cpp may be missing here
    assert all(results[k]["error"] == f"skipped: {strong_pair.NOT_HERE}" for k in strong)
    skipped -= strong
    for k in skipped:
        assert "llama-cpp-python not importable" in results[k]["error"]
    if os.environ.get("SPECDEC_LLAMA_PYTHON"):  # asked for: it must run
        assert not skipped
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0
    assert json.loads(paths["json"].read_text())["rows"]
    md = paths["markdown"].read_text()
    assert all(strong_pair.display(c) in md for c in contender_names()) and "Goals" in md
    assert paths["ms_per_token_png"].read_bytes()[:4] == b"\x89PNG"


def test_rows_complete_and_sane(bench):
    report, _ = bench
    rows = report["rows"]
    ran = {k for k, r in report["workloads"][0]["results"].items() if r["ok"]}
    assert {r["contender"] for r in rows} == contender_names()
    assert {r["contender"] for r in rows if r["temperature"] == 0.0} == contender_names() - {"floor"}
    # llama.cpp runs greedy only: no row at T=0.7
    skipped = {k for k, r in report["workloads"][0]["results"].items() if r.get("skipped")}
    assert {r["contender"] for r in rows if r["temperature"] == 0.7} == \
        contender_names() - {"floor"} - LLAMA - skipped
    for r in rows:
        if not r["ok"]:
            assert r["skipped"] and r["contender"] in LLAMA | {"self_draft"} | set(strong_pair.CONTENDERS)
            continue
        for f in FIELDS:
            assert r[f] is not None and r[f] >= 0, (r["contender"], f, r[f])
        assert r["ms_per_token"] > 0 and r["tokens_per_second"] > 0 and r["peak_rss_bytes"] > 0
        assert r["tokens_per_pass"] >= 1
        if r["contender"] in STREAMED | {"floor"}:
            assert r["bytes_read_per_token"] > 0, r  # streamed from disk, not from RAM
        if r["contender"] in {"chain", "tree", "overlap", "llamacpp_spec"}:
            assert 0 <= r["acceptance_rate"] <= 1
        if r["contender"] in {"chain", "tree", "overlap"}:  # catch-ups (a prompt, plain passes'
            # tokens) apart from drafting; each is longer than a decode step (the first prompt
            # is read in the warm-up, so there may be none)
            assert r["draft_catch_up_tokens"] >= 3 * r["draft_catch_ups"] >= 0
            assert 0 <= r["draft_catch_up_ms_per_pass"] <= r["draft_ms_per_pass"]
            assert r["draft_ms_per_token"] is None or r["draft_ms_per_token"] >= 0
        if r["contender"] in {"chain", "tree", "overlap"}:  # specdec's own counts
            assert r["draft_ms_per_pass"] >= 0
            assert all(0 <= a <= 1 for a in r["position_acceptance"])
            assert len(r["position_acceptance"]) <= len(r["position_offered"])
        if r["contender"] == "overlap":
            assert 0 <= r["draft_critical_share"] <= 1 and r["tree_nodes_sent_per_pass"] >= 0
        if LLAMA & ran:
            assert r["x_llamacpp"] > 0
    assert {g["goal"] for g in report["goals"]} == {
        "plain_vs_floor", "speculative_vs_plain", "speculative_vs_hf_assisted"}
    floor = report["workloads"][0]["results"]["floor"]["floor"]
    row = next(r for r in rows if r["contender"] == "floor")
    fastest = min(floor["raw_seconds_each"] + [floor["stream_only_seconds"]])
    assert row["ms_per_token"] == pytest.approx(fastest * 1e3)


def test_the_floor_is_the_fastest_read_raw_or_the_prefetchers():
    """Where the prefetcher reads a pass's bytes faster than the raw reads, that is the floor:
    a floor above what the streaming itself reaches would flatter every ratio to it."""
    from specdec.bench.worker import floor_seconds

    assert floor_seconds({"raw_seconds_each": [1.8, 2.0, 2.4], "stream_only_seconds": 1.5}) == 1.5
    assert floor_seconds({"raw_seconds_each": [1.8, 2.0, 2.4], "stream_only_seconds": 1.9}) == 1.8
    assert floor_seconds({"raw_seconds": 1.7}) == 1.7


def test_speculative_text_equals_plain_at_temperature_zero(bench):
    report, _ = bench
    results = report["workloads"][0]["results"]

    def texts(name):
        return [x["text"] for x in results[name]["runs"] if x["temperature"] == 0]
    assert all(texts("plain")) and texts("chain") == texts("plain") and texts("tree") == texts("plain")
    assert texts("overlap") == texts("plain")
    assert texts("hf_assisted") == texts("hf")
    assert all(r["matches_plain"] for r in report["rows"] if r["temperature"] == 0
               and r["contender"] in {"chain", "tree", "overlap", "hf_assisted", "llamacpp_spec"}
               and r["ok"])
    if results["llamacpp"]["ok"]:  # llama.cpp's own greedy text, plain and speculative alike
        assert all(texts("llamacpp")) and texts("llamacpp_spec") == texts("llamacpp")
    # the draft is a light copy of the target: speculation really ran, with acceptance
    chain = next(r for r in report["rows"] if r["contender"] == "chain" and r["temperature"] == 0)
    assert chain["acceptance_rate"] > 0 and chain["tokens_per_pass"] > 1


def test_cli_registers_bench_offload():
    from specdec.cli import build_parser

    args = build_parser().parse_args(["bench", "offload", "--quick", "--threads", "1"])
    assert args.quick and args.threads == 1 and callable(args.handler)


def test_evict_page_cache_advises_every_file(tmp_path):
    from specdec.bench.memcap import evict_page_cache

    (tmp_path / "x.bin").write_bytes(b"x" * 8192)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "y.bin").write_bytes(b"y" * 8192)
    assert "posix_fadvise(DONTNEED) on 2 files" in evict_page_cache([tmp_path])


def test_proc_io_counts_an_uncached_read(tmp_path):
    """Reading a file of known size with O_DIRECT (the device, not the page cache) raises
    this process's read_bytes by at least that many bytes: the bench's MB-read column."""
    from offload.reader import DirectReader, aligned_buffer
    from specdec.bench.memcap import proc_io

    if "read_bytes" not in proc_io():
        pytest.skip("/proc/self/io is not readable here (not Linux, or restricted)")
    size = 4 << 20
    f = tmp_path / "known.bin"
    f.write_bytes(bytes(range(256)) * (size // 256))
    buf = aligned_buffer(size)
    with DirectReader() as reader:
        before = proc_io()["read_bytes"]
        assert reader.read_file(f, buf, size) == size
        grown = proc_io()["read_bytes"] - before
        if reader.fallback_files:
            pytest.skip(f"O_DIRECT refused on {tmp_path}'s filesystem: reads may hit the page cache")
    assert grown >= size, f"read {size} bytes uncached, /proc/self/io counted {grown}"


def test_memory_cap_kills_a_process_over_its_limit():
    """Where a memory cgroup can be made (root in a container), it really caps the child."""
    import os
    import subprocess
    import sys

    from specdec.bench.memcap import MemoryCap

    cap = MemoryCap.create(150 * 10**6)
    if cap is None:
        pytest.skip("no memory cgroup can be created here (the bench falls back to eviction)")
    try:
        def run(mb):  # bytearray zero-fills: every page is really touched
            code = f"b = bytearray({mb} * 10**6)"
            return subprocess.run([sys.executable, "-c", code],
                                  preexec_fn=lambda: cap.add(os.getpid())).returncode
        assert run(20) == 0
        assert run(400) != 0
        assert cap.oom_kills() >= 1 or cap.peak_bytes() <= 150 * 10**6
    finally:
        cap.close()


def test_a_fixed_tree_size_reaches_the_tree_contender(bench):
    """`--tree-nodes N`: the tree contender drafts N-node trees every pass (the cost model
    would size them itself), and its greedy text still equals plain's."""
    from specdec.cli import main

    report, paths = bench
    root = paths["json"].parent.parent
    out = root / "out_fixed_tree"
    rc = main(["bench", "offload", "--quick", "--target", str(root / "target"), "--draft",
               str(root / "draft"), "--ram", "1.5GB", "--dtype", "float32", "--stream-all",
               "--threads", "1", "--max-new-tokens", "12", "--out", str(out), "--cache-dir",
               str(root / "cache"), "--contenders", "tree", "--tree-nodes", "3"])
    assert rc == 0
    fixed = json.loads((out / "report.json").read_text())
    row = next(r for r in fixed["rows"] if r["contender"] == "tree" and r["temperature"] == 0)
    # every pass drafts 3 nodes, but the last two of a reply, which its remaining tokens cap
    runs = [x for x in fixed["workloads"][0]["results"]["tree"]["runs"] if x["temperature"] == 0]
    drafted, passes = sum(x["drafted"] for x in runs), sum(x["target_passes"] for x in runs)
    assert 3 * (passes - 2 * len(runs)) <= drafted <= 3 * passes
    assert row["drafted_per_pass"] == drafted / passes
    assert any("fixed 3-node trees" in n for n in fixed["notes"])

    def texts(rep, name):
        return [x["text"] for x in rep["workloads"][0]["results"][name]["runs"] if x["temperature"] == 0]
    assert texts(fixed, "tree") and texts(fixed, "tree") == texts(report, "plain")


def test_tree_nodes_go_to_tree_modes_only_and_zero_is_refused(capsys):
    from specdec.bench.worker import speculation_kwargs
    from specdec.cli import main

    job = {"contender": {"speculation": "tree"}, "tree_nodes": 16}
    assert speculation_kwargs(job) == {"speculation": "tree", "tree_nodes": 16}
    assert speculation_kwargs({**job, "contender": {"speculation": "overlap"}})["tree_nodes"] == 16
    assert speculation_kwargs({**job, "contender": {"speculation": "chain"}}) == {"speculation": "chain"}
    assert speculation_kwargs({**job, "tree_nodes": None}) == {"speculation": "tree"}
    assert main(["bench", "offload", "--quick", "--tree-nodes", "0"]) == 2
    assert "--tree-nodes 0: a tree needs at least 1 node" in capsys.readouterr().err
