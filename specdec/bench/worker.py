"""One contender of `specdec bench offload`, alone in its process (under the RAM cap the
parent put it in):

    python -m specdec.bench.worker JOB.json RESULT.json

A job names the contender (floor | specdec | hf), the workload's files and budgets, and
the runs (prompt ids, temperature, seed, max new tokens). Each run's wall time and the
bytes this process read from storage (/proc/self/io, all threads) are measured around the
generate call only; loading is not timed. One short warm-up generation of the first run's
prompt comes first for every contender alike (lazy allocations, first-read checksums,
first-call kernels); it leaves the target and, for speculative rows, the draft holding that
prompt, so no mode reads it inside the timed run.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from .iobench import peak_rss_bytes
from .memcap import proc_io

# A prefill pass that drafts, then at most one more token: every code path touched once. With
# one token of room a pass has nothing to draft, so the chain's draft would not read the prompt
# until the timed run (the tree's and overlap's catch up anyway): two tokens level every mode.
WARMUP_TOKENS = 2


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(int(job["threads"]))
    kind = job["contender"]["kind"]
    started = time.perf_counter()
    result = {"floor": run_floor, "specdec": run_specdec, "hf": run_hf}[kind](job)
    result.update(peak_rss_bytes=peak_rss_bytes(), threads=torch.get_num_threads(),
                  process_seconds=time.perf_counter() - started)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


def run_floor(job: dict) -> dict:
    """The physical floor: O_DIRECT read of what one pass streams, plus streamed passes
    of 1..64 tokens (pass time vs tokens verified), from specdec's `bench io`."""
    from .iobench import bench_io

    w = job["workload"]
    ram = None if w["stream_all"] else w["ram_bytes"]  # None: bench io streams every layer
    r = bench_io(w["store"], job["pass_tokens"], ram=ram, repeat=job.get("repeat", 2),
                 max_context=w["max_context"])  # the plain run's plan: same layers streamed
    # Disk speed drifts from read to read (2x within a minute seen here): a floor is a lower
    # bound, so it is the fastest of three raw reads; all three are kept.
    reads = [r["raw_seconds"]] + [_raw_read(w["store"], r["streamed_layers"]) for _ in range(2)]
    r["raw_seconds_each"], r["raw_seconds"] = reads, min(reads)
    r["raw_gb_per_s"] = r["streamed_bytes"] / r["raw_seconds"] / 1e9 if r["raw_seconds"] else None
    return {"floor": r}


def floor_seconds(f: dict) -> float:
    """The floor of a `bench io` result: the fastest read of one pass's bytes it measured, the
    raw O_DIRECT reads or the prefetcher reading alone. On some disks the prefetcher is the
    faster (2026-12-07, Zen 4: 5-20% in every seed-13b run; plain decoding beat the raw reads'
    best), and a floor above what the streaming itself reaches would flatter every ratio to it."""
    reads = list(f.get("raw_seconds_each") or [f["raw_seconds"]])
    if f.get("stream_only_seconds"):
        reads.append(f["stream_only_seconds"])
    return min(reads)


def _raw_read(store_path: str, n_streamed: int) -> float:
    """One O_DIRECT read of the last `n_streamed` layer files (pinned layers come first)."""
    from offload.format import open_store

    from .iobench import time_raw_read

    store = open_store(store_path)
    files = [store.layer_file(i) for i in range(store.num_layers - n_streamed, store.num_layers)]
    return time_raw_read(files)[0]


def run_specdec(job: dict) -> dict:
    import specdec

    from .workloads import minimum_budget

    w, c = job["workload"], job["contender"]
    draft = job_draft(w, c)
    ram = w["ram_bytes"]
    if w["stream_all"]:
        ram = minimum_budget(w["store"], draft, w["max_context"], w["dtype"])
    lm = specdec.load(w["store"], draft=draft, ram=ram, max_context=w["max_context"],
                      dtype=w["dtype"], progress=False, **speculation_kwargs(job))
    try:
        runs = _timed_runs(job, specdec_generate(lm))
        return {"runs": runs, "plan": lm.plan.as_dict() if lm.plan else None}
    finally:
        lm.close()


def specdec_generate(lm):
    """A job run -> (token ids, its counts) with a loaded SpecDecoder `lm`."""
    def generate(run):
        out = lm.generate(run["prompt_ids"], max_new_tokens=run["max_new_tokens"],
                          temperature=run["temperature"], seed=run["seed"])
        s = out.stats
        return out.token_ids, {"target_passes": s.target_passes, "drafted": s.drafted,
                               "accepted": s.accepted, "rejected": s.rejected,
                               "streamed_bytes": s.bytes_read, "draft_seconds": s.draft_seconds,
                               "position_offered": s.position_offered,
                               "position_taken": s.position_taken,
                               "source_counters": s.source,  # a MoE target's expert counters
                               **s.counters}  # a strategy's own (overlap: draft seconds hidden/critical)
    return generate


def speculation_kwargs(job: dict) -> dict:
    """How a specdec contender speculates: its mode, and the bench's fixed tree size
    (--tree-nodes) where the mode drafts a tree."""
    mode = job["contender"].get("speculation", "chain")
    fixed = job.get("tree_nodes") if mode in ("tree", "overlap") else None
    return {"speculation": mode, **({"tree_nodes": fixed} if fixed is not None else {})}


def job_draft(w: dict, c: dict) -> str | None:
    """The draft a specdec contender loads: none, the workload's own, "self" (self-draft), or
    the workload's draft named by the contender's draft_source (e.g. the strong pair's)."""
    if not c.get("draft"):
        return None
    source = c.get("draft_source")
    return w.get("drafts", {}).get(source, source) if source else w["draft"]


def run_hf(job: dict) -> dict:
    from . import hf as bench_hf

    w, c = job["workload"], job["contender"]
    dtype = getattr(torch, w["dtype"])
    model = bench_hf.load_offloaded(Path(w["hf_dir"]), w["hf_cpu_bytes"], Path(w["offload_folder"]), dtype)
    assistant = bench_hf.load_assistant(Path(w["hf_draft"]), dtype) if c.get("draft") else None
    counter = bench_hf.PassCounter(model)
    eos = tuple(w.get("eos_ids", ()))

    def generate(run):
        before = counter.calls
        ids = bench_hf.hf_generate(model, run["prompt_ids"], run["max_new_tokens"],
                                   run["temperature"], run["seed"], assistant, eos)
        return ids, {"target_passes": counter.calls - before}
    runs = _timed_runs(job, generate)
    counter.close()
    return {"runs": runs, "placement": bench_hf.offloaded_fraction(model)}


def _timed_runs(job: dict, generate) -> list[dict]:
    first = dict(job["runs"][0], max_new_tokens=WARMUP_TOKENS)
    generate(first)
    out = []
    for run in job["runs"]:
        io0, t0 = proc_io().get("read_bytes", 0), time.perf_counter()
        ids, extra = generate(run)
        seconds = time.perf_counter() - t0
        read = proc_io().get("read_bytes", 0) - io0
        out.append({"prompt_index": run["prompt_index"], "temperature": run["temperature"],
                    "seed": run["seed"], "new_tokens": len(ids), "token_ids": ids,
                    "seconds": seconds, "bytes_read": read, **extra})
    return out


if __name__ == "__main__":
    sys.exit(main())
