"""llama.cpp's row of the MoE benchmark: the GGUF a store was packed from, memory-mapped by
llama.cpp (llama-cpp-python, as its users run it: use_mmap, no mlock) in a fresh memory cgroup
of the same cap after the GGUF's pages are evicted. It is given what specdec's plain row was
given (the chat prompts' token ids, the token count, the eos ids, the thread count), decodes
greedily, and its tokens are checked against that row's: llama.cpp's kernels round differently,
so a near-tie may go the other way; the row reports the share of positions that agree instead
of asserting equality.

The worker is the dense benchmark's (specdec/bench/llama_worker.py), run by path with an
interpreter that has llama-cpp-python; without one the row says why and the others stand.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

CONTENDER = "llamacpp-mmap"
BASELINE = "plain-direct"  # the specdec row whose prompts and tokens llama.cpp's are checked against


def find_gguf(store: Path, given: Path | None = None) -> Path:
    """The GGUF llama.cpp runs: `given`, else the file the store was packed from (its manifest's
    source), else STORE's name less "-store" + ".gguf" beside it (moe_bench.sh's layout)."""
    if given is not None:
        if not Path(given).is_file():
            raise FileNotFoundError(f"--gguf {given}: no such file")
        return Path(given)
    source = _store_source(store)
    beside = store.parent / (store.name.removesuffix("-store") + ".gguf")
    for candidate in (Path(source) if source else None, beside):
        if candidate is not None and candidate.suffix == ".gguf" and candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no GGUF for {store}: neither its source ({source}) nor {beside} "
                            "exists; pass --gguf PATH (the file the store was packed from)")


def _store_source(store: Path) -> str | None:
    """What `specdec pack` read the store from (its manifest's "source"), None if unknown."""
    from offload.format import MANIFEST

    try:
        return json.loads((Path(store) / MANIFEST).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None


def llama_row(store: Path, gguf: Path | None, cap: int, rows: list[dict], tokens: int,
              timeout: float, llama_python: str | None = None) -> dict:
    """llama.cpp's row after specdec's `rows`: skipped, with why, without a GGUF or an
    interpreter that imports llama_cpp (`llama_python`, default: this one)."""
    from specdec.bench.runner import llama_python as find_interpreter

    try:
        gguf = find_gguf(store, gguf)
    except FileNotFoundError as e:
        return {"contender": CONTENDER, "skipped": True, "error": f"skipped: {e}"}
    llama_py, why = find_interpreter(llama_python)
    baseline = next((r for r in rows if r["contender"] == BASELINE), None)
    return run_llama(gguf, cap, baseline, tokens, timeout, llama_py, why)


def llama_job(gguf: Path, baseline: dict, tokens: int) -> dict:
    """The dense benchmark worker's job, from the baseline row (moe_bench.worker's output)."""
    runs = [{"prompt_index": i, "prompt_ids": g["prompt_ids"], "temperature": 0.0, "seed": 0,
             "max_new_tokens": tokens} for i, g in enumerate(baseline["greedy"])]
    return {"contender": {"name": CONTENDER, "draft": False}, "threads": baseline["threads"],
            "workload": {"gguf": str(gguf), "eos_ids": baseline["eos_ids"]}, "runs": runs}


def run_llama(gguf: Path, cap: int, baseline: dict | None, tokens: int, timeout: float,
              llama_py: str | None, skip_why: str = "") -> dict:
    """llama.cpp's row; skipped (with why) without an interpreter or a baseline to copy."""
    from specdec.bench.memcap import MemoryCap, evict_page_cache
    from specdec.bench.runner import LLAMA_WORKER, spawn_worker

    if llama_py is None:
        return {"contender": CONTENDER, "skipped": True, "error": f"skipped: {skip_why}"}
    if not baseline or "greedy" not in baseline:
        why = (baseline or {}).get("error", "not run")
        return {"contender": CONTENDER, "skipped": True,
                "error": f"skipped: it takes its prompts from the {BASELINE} row ({why})"}
    evict_page_cache([gguf])
    group = MemoryCap.create(cap)
    log = Path(tempfile.gettempdir()) / "specdec-moe-bench" / f"{CONTENDER}.log"
    try:
        result = spawn_worker(llama_job(gguf, baseline, tokens), group, log, [llama_py, str(LLAMA_WORKER)],
                              timeout=timeout)
        peak = group.peak_bytes() if group is not None else None
    finally:
        if group is not None:
            group.close()
    return {"contender": CONTENDER, "cgroup": group is not None, "peak_cgroup_bytes": peak,
            **row_of(result, baseline, tokens)}


def row_of(result: dict, baseline: dict, max_tokens: int | None = None) -> dict:
    """The worker's result as a moe-bench row (the table's keys), with the greedy agreement
    (over the baseline's first `max_tokens` tokens per prompt: llama.cpp's row may run fewer)."""
    if not result.get("ok"):
        return {"error": result["error"]}
    runs = result["runs"]
    tokens = sum(r["new_tokens"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    passes = sum(r["target_passes"] for r in runs)
    agreement = greedy_agreement([r["token_ids"] for r in runs],
                                 [g["token_ids"][:max_tokens] for g in baseline["greedy"]])
    return {"isa": baseline["isa"], "llama_cpp_version": result["llama_cpp_version"],
            "threads": result["threads"], "use_mmap": result["use_mmap"], "tokens": tokens,
            "seconds": seconds, "tokens_per_second": tokens / seconds,
            "bytes_read_per_token": sum(r["bytes_read"] for r in runs) / tokens,
            "tokens_per_pass": tokens / passes, "peak_rss_bytes": result["peak_rss_bytes"],
            "decode": decode_part(runs), "token_ids": [r["token_ids"] for r in runs], **agreement}


def decode_part(runs: list[dict]) -> dict:
    """The tokens after each prompt's first (its prompt pass apart), as moe_bench's rows split
    them: what a generated token costs without the prompt's union of experts."""
    return {"tokens": sum(max(r["new_tokens"] - 1, 0) for r in runs),
            "seconds": sum(r["seconds"] - r.get("prefill_seconds", r["seconds"]) for r in runs),
            "bytes_read": sum(r["bytes_read"] - r.get("prefill_bytes_read", r["bytes_read"]) for r in runs)}


def greedy_agreement(theirs: list[list[int]], ours: list[list[int]]) -> dict:
    """Share of token positions where both runtimes chose the same token (over the longer run
    of each prompt), and per prompt the first position where they differ (None: identical)."""
    same = total = 0
    first = []
    for a, b in zip(theirs, ours, strict=True):
        same += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
        differ = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        first.append(differ if differ is not None or len(a) == len(b) else min(len(a), len(b)))
    return {"greedy_match_share": same / total if total else None, "first_difference": first,
            "greedy_matched": same, "greedy_positions": total}


def agreement_line(row: dict) -> str:
    """One line under the table: how far llama.cpp's greedy tokens follow specdec's."""
    if row.get("greedy_match_share") is None:
        return ""
    return (f"{CONTENDER}: greedy tokens equal {BASELINE}'s at {row['greedy_matched']} of "
            f"{row['greedy_positions']} positions ({row['greedy_match_share']:.0%}); first "
            f"difference per prompt: {row['first_difference']} (None: identical); llama.cpp "
            f"{row['llama_cpp_version']}, {row['threads']} threads, memory-mapped")
