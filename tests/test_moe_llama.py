"""llama.cpp's row of the MoE benchmark (tools/inflate/moe_llama.py). The plumbing (which GGUF,
the job the dense benchmark's llama worker is given, the row and the greedy agreement made of
its result, the skips) runs without llama-cpp-python, through a stand-in interpreter that
answers the worker's protocol; the real llama.cpp run on a tiny MoE GGUF skips without it."""
import json
import stat
import sys
import textwrap

import pytest

from tools.inflate.moe_bench import table
from tools.inflate.moe_llama import (BASELINE, CONTENDER, agreement_line, find_gguf, greedy_agreement,
                                     llama_job, llama_row)

PROMPTS = [[3, 17, 42, 99, 5], [8, 11, 140], [60, 7], [121, 33, 2, 19]]  # token ids of the tiny vocab
BASELINE_ROW = {"contender": BASELINE, "isa": "AVX2", "threads": 2, "eos_ids": [2],
                "greedy": [{"prompt_ids": [1, 5, 9], "token_ids": [7, 8, 9, 10]},
                           {"prompt_ids": [1, 6], "token_ids": [11, 12, 2]}]}


def stand_in_python(tmp_path, importable=True, answer=None):
    """An executable that passes runner.llama_python's `-c "import llama_cpp"` check (or fails
    it) and, run as `PY llama_worker.py JOB RESULT`, saves the job and writes `answer`'s result."""
    worker = tmp_path / "stand_in_worker.py"
    worker.write_text(textwrap.dedent(f"""
        import json, shutil, sys
        job = json.load(open(sys.argv[2]))
        shutil.copy(sys.argv[2], {str(tmp_path / "job_seen.json")!r})
        runs = [{{"prompt_index": r["prompt_index"], "new_tokens": len(ids), "token_ids": ids,
                  "seconds": 0.5, "bytes_read": 3_000_000 * len(ids), "target_passes": len(ids),
                  "prefill_seconds": 0.2, "prefill_bytes_read": 4_000_000}}
                for r, ids in zip(job["runs"], {answer!r})]
        json.dump({{"runs": runs, "peak_rss_bytes": 10**8, "threads": job["threads"],
                   "llama_cpp_version": "0.0-stand-in", "use_mmap": True}}, open(sys.argv[3], "w"))
    """))
    py = tmp_path / "python-stand-in"
    check = "exit 0" if importable else "echo 'No module named llama_cpp' >&2; exit 1"
    py.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then {check}; fi\nexec {sys.executable} {worker} "$@"\n')
    py.chmod(py.stat().st_mode | stat.S_IXUSR)
    return str(py)


@pytest.fixture
def store_and_gguf(tmp_path):
    """An (empty) store directory whose manifest names its source GGUF, and that GGUF."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    store = tmp_path / "m-store"
    store.mkdir()
    return store, gguf


def test_the_gguf_is_the_stores_source_else_beside_it_else_a_clear_error(tmp_path):
    store = tmp_path / "x-store"
    elsewhere = tmp_path / "sub" / "orig.gguf"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"GGUF")
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"source": str(elsewhere)}))
    assert find_gguf(store) == elsewhere
    elsewhere.unlink()
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    assert find_gguf(store) == tmp_path / "x.gguf"  # moe_bench.sh's layout
    (tmp_path / "x.gguf").unlink()
    with pytest.raises(FileNotFoundError, match="pass --gguf PATH"):
        find_gguf(store)
    with pytest.raises(FileNotFoundError, match="--gguf .*nope.gguf: no such file"):
        find_gguf(store, tmp_path / "nope.gguf")


def test_greedy_agreement_counts_positions_and_first_differences():
    a = greedy_agreement([[1, 2, 3, 4], [5, 6], [7, 8]], [[1, 2, 9, 4], [5, 6], [7, 8, 2]])
    assert a["greedy_matched"] == 7 and a["greedy_positions"] == 9
    assert a["greedy_match_share"] == pytest.approx(7 / 9)
    assert a["first_difference"] == [2, None, 2]  # a shorter run differs where it stopped
    assert greedy_agreement([[1]], [[2]])["greedy_match_share"] == 0
    with pytest.raises(ValueError):  # one answer per prompt, or the comparison means nothing
        greedy_agreement([[1]], [[1], [2]])


def test_the_job_is_the_baseline_rows_prompts_threads_and_eos(tmp_path):
    job = llama_job(tmp_path / "m.gguf", BASELINE_ROW, 4)
    assert [r["prompt_ids"] for r in job["runs"]] == [[1, 5, 9], [1, 6]]
    assert {r["temperature"] for r in job["runs"]} == {0.0} and job["runs"][0]["max_new_tokens"] == 4
    assert job["threads"] == 2 and job["workload"] == {"gguf": str(tmp_path / "m.gguf"), "eos_ids": [2]}
    assert job["contender"]["draft"] is False  # the dense worker's plain (non-speculative) path


def test_the_row_through_the_dense_benchmarks_worker_protocol(tmp_path, store_and_gguf):
    store, gguf = store_and_gguf
    py = stand_in_python(tmp_path, answer=[[7, 8, 5, 10], [11, 12, 2]])
    row = llama_row(store, gguf, 2 * 10**9, [BASELINE_ROW], 4, 60, py)
    assert "error" not in row, row
    seen = json.loads((tmp_path / "job_seen.json").read_text())
    assert seen == llama_job(gguf, BASELINE_ROW, 4)
    assert row["contender"] == CONTENDER and row["tokens"] == 7 and row["seconds"] == 1.0
    assert row["tokens_per_second"] == 7.0 and row["bytes_read_per_token"] == 3e6
    assert row["tokens_per_pass"] == 1.0 and row["threads"] == 2 and row["use_mmap"]
    assert row["decode"] == {"tokens": 5, "seconds": pytest.approx(0.6), "bytes_read": 13_000_000}
    assert row["greedy_matched"] == 6 and row["first_difference"] == [2, None]
    if row["cgroup"]:  # root with a memory controller: the cap's peak is read back
        assert row["peak_cgroup_bytes"] is not None
    text = table([{**BASELINE_ROW, "tokens_per_second": 1.0, "bytes_read_per_token": 1e6,
                   "tokens_per_pass": 1.0, "peak_cgroup_bytes": None, "experts_per_layer_pass": 8.0,
                   "expert_hit_rate": 0.5}, row], {"raw_gb_per_s": 1.0, "raw_bytes": 10**9})
    assert f"{CONTENDER} | AVX2 | 7.000 | 3.0 | 3 | 2.6 | - | - | - | 1.00 |" in text
    assert "6 of 7 positions (86%)" in agreement_line(row)


def test_fewer_llama_tokens_are_checked_against_the_baselines_first_ones(tmp_path, store_and_gguf):
    store, gguf = store_and_gguf
    py = stand_in_python(tmp_path, answer=[[7, 8], [11, 5]])
    row = llama_row(store, gguf, 2 * 10**9, [BASELINE_ROW], 2, 60, py)  # --llama-tokens 2
    assert json.loads((tmp_path / "job_seen.json").read_text())["runs"][0]["max_new_tokens"] == 2
    assert row["greedy_positions"] == 4 and row["greedy_matched"] == 3  # not the baseline's 7

def test_the_row_is_skipped_with_why(tmp_path, store_and_gguf):
    store, gguf = store_and_gguf
    missing = llama_row(store, gguf, 10**9, [BASELINE_ROW], 4, 60, stand_in_python(tmp_path, False))
    assert missing["skipped"] and "llama-cpp-python not importable" in missing["error"]
    py = stand_in_python(tmp_path, answer=[[1]])
    failed_plain = {"contender": BASELINE, "error": "exit -9 (OOM-killed?)"}
    row = llama_row(store, gguf, 10**9, [failed_plain], 4, 60, py)
    assert row["skipped"] and "plain-direct row (exit -9" in row["error"]
    lonely = tmp_path / "lonely-store"
    lonely.mkdir()
    row = llama_row(lonely, None, 10**9, [BASELINE_ROW], 4, 60, py)  # no GGUF anywhere
    assert row["skipped"] and "pass --gguf" in row["error"]
    assert not (tmp_path / "job_seen.json").exists()  # nothing was run
    text = table([row], {"raw_gb_per_s": 1.0, "raw_bytes": 10**9})
    assert f"{CONTENDER} | skipped: no GGUF" in text


def test_a_worker_that_fails_gives_a_failed_row(tmp_path, store_and_gguf):
    store, gguf = store_and_gguf
    py = stand_in_python(tmp_path, answer=None)  # the stand-in crashes on this answer
    row = llama_row(store, gguf, 10**9, [BASELINE_ROW], 4, 60, py)
    assert "exit status 1" in row["error"] and not row.get("skipped")
    assert "failed: exit status 1" in table([row], {"raw_gb_per_s": 1.0, "raw_bytes": 10**9})



@pytest.mark.filterwarnings("ignore:.*tokenizer")
def test_llama_cpp_runs_the_synthetic_moe_gguf_and_follows_specdecs_greedy_tokens(tmp_path):
    """The real thing on a tiny synthetic MoE (llama.cpp's Mixtral layout), needs llama-cpp-python."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'specdec[bench]')")
    from helpers.moe_budget import minimum_ram
    from helpers.tiny_llama_gguf import tiny_gguf
    from offload.pack import pack
    from tools.inflate.builder import Shape
    from tools.inflate.moe import MoeShape, write_moe_gguf
    from tools.inflate.moe_bench import worker

    tiny_gguf(tmp_path / "tiny.gguf", merges=True)
    shape = MoeShape(Shape(hidden=256, layers=5, heads=8, kv_heads=4, intermediate=64, head_dim=32), 8, 4)
    gguf = write_moe_gguf(tmp_path / "tiny.gguf", shape, tmp_path / "moe.gguf", progress=False)
    store = pack(gguf, tmp_path / "moe-store", progress=False)
    plain = worker({"store": str(store), "ram": minimum_ram(store) + 10**7, "tokens": 12,
                    "prompts": PROMPTS, "settings": {}})
    row = llama_row(store, None, 2 * 10**9, [{"contender": BASELINE, **plain}], 12, 300, sys.executable)
    assert "error" not in row, row
    assert row["tokens"] == 12 * len(PROMPTS) and row["use_mmap"] and row["bytes_read_per_token"] >= 0
    assert row["decode"]["tokens"] == 11 * len(PROMPTS) and 0 < row["decode"]["seconds"] < row["seconds"]
    # Q4_1/Q8_0 kernels round differently from specdec's: the first tokens agree (and depend on
    # the prompt, so no constant answer passes), most others do
    firsts = [ids[0] for ids in row["token_ids"]]
    assert firsts == [g["token_ids"][0] for g in plain["greedy"]] and len(set(firsts)) > 1
    assert row["greedy_match_share"] >= 0.5, agreement_line(row)
