"""The llama.cpp contenders of `specdec bench offload` (`llamacpp`, `llamacpp_spec`), alone in
their process under the same RAM cap as the others:

    PYTHON specdec/bench/llama_worker.py JOB.json RESULT.json

Run BY PATH with an interpreter that has llama-cpp-python (`--llama-python`; it may be a venv
without torch), so this file imports only the standard library, numpy and llama_cpp - never
`specdec` (whose package imports torch).

llama.cpp runs as its users run it: the GGUF memory-mapped (llama.cpp's default; under a cap
smaller than the file the kernel re-reads evicted pages on every token), `threads` threads,
greedy decoding. Q4_1/Q8_0 weights are never repacked into anonymous memory by llama.cpp, so
for these files mmap streaming is already its best configuration under a cap.

Speculative decoding: llama-cpp-python has no two-model speculation built in, only the
`draft_model` hook of `Llama.generate` (one target eval of the accepted token + the drafts,
logits for every position, greedy check, KV cut at the first mismatch). `GreedyDraft` plugs a
second `Llama` (the draft GGUF) into that hook, proposing `draft_tokens` greedy tokens per pass.
Only temperature-0 runs are done (llama.cpp's sampler is not specdec's: sampled runs would not
compare); the job's other runs are left out and the report shows no row for them.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

WARMUP_TOKENS = 1
GREEDY = dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)


def proc_read_bytes() -> int:
    """This process's bytes read from storage (/proc/self/io; mmap page faults included)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass  # not Linux: the column stays 0
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def make_greedy_draft(llama_cls, base_cls):
    """A LlamaDraftModel proposing `k` greedy tokens of a second Llama (built here so that
    importing this module needs no llama_cpp: tests read its helpers without it)."""

    class GreedyDraft(base_cls):
        def __init__(self, model, k: int):
            self.model, self.k, self.proposed, self.calls = model, k, 0, 0
            self.budget = k  # tokens the caller still wants after the next one (set per token)

        def __call__(self, input_ids, /, **kwargs):
            out, k = [], min(self.k, self.budget)
            # generate(reset=True) keeps the longest cached prefix: only new tokens are evaluated
            for tok in self.model.generate(list(map(int, input_ids)), **GREEDY) if k > 0 else ():
                out.append(tok)
                if len(out) >= k:
                    break
            self.proposed += len(out)
            self.calls += 1
            return np.array(out, dtype=np.intc)
    return GreedyDraft


def context_size(job: dict, extra: int) -> int:
    need = max(len(r["prompt_ids"]) + r["max_new_tokens"] for r in job["runs"]) + extra + 16
    return -(-need // 256) * 256


def load(job: dict):
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaDraftModel

    w, c, threads = job["workload"], job["contender"], int(job["threads"])
    k = int(job.get("draft_tokens", 8))
    n_ctx = context_size(job, k + 1)
    common = dict(n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, use_mmap=True,
                  n_batch=512, verbose=False, seed=0)
    draft = None
    if c.get("draft"):
        draft = make_greedy_draft(Llama, LlamaDraftModel)(
            Llama(model_path=w["draft_gguf"], **common), k)
    target = Llama(model_path=w["gguf"], draft_model=draft, **common)
    return target, draft


class PassCounter:
    """Counts the target's eval calls: one per forward pass (the prompt: one pass per batch)."""

    def __init__(self, llama):
        self.calls, inner = 0, llama.eval

        def counted(tokens):
            self.calls += 1
            return inner(tokens)
        llama.eval = counted


def generate(target, draft, prompt_ids: list[int], max_new: int, eos: set[int],
             first: dict | None = None) -> list[int]:
    """Greedy tokens; `first` gets the bytes read and the time when the first token came out
    (the prompt's pass done: what follows is decoding)."""
    # Every run starts cold: no KV reuse across prompts (specdec's runs keep a shared prefix,
    # as its chat does; docs/benchmarks.md, what is timed).
    target.reset()
    if draft is not None:
        draft.model.reset()
    out = []
    for tok in target.generate(prompt_ids, **GREEDY):
        if not out and first is not None:
            first.update(bytes_read=proc_read_bytes(), at=time.perf_counter())
        out.append(int(tok))
        if len(out) >= max_new or tok in eos:
            break
        if draft is not None:  # no drafts past max_new: the last pass is not cut short
            draft.budget = max_new - len(out) - 1
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    started = time.perf_counter()
    target, draft = load(job)
    counter = PassCounter(target)
    eos = set(job["workload"].get("eos_ids") or ())
    greedy = [r for r in job["runs"] if r["temperature"] == 0]
    generate(target, draft, greedy[0]["prompt_ids"], WARMUP_TOKENS, eos)
    runs = []
    for run in greedy:
        p0, d0 = counter.calls, (draft.proposed if draft else 0)
        io0, t0, first = proc_read_bytes(), time.perf_counter(), {}
        ids = generate(target, draft, run["prompt_ids"], run["max_new_tokens"], eos, first)
        seconds = time.perf_counter() - t0
        passes = counter.calls - p0
        extra = {}
        if draft is not None:  # each pass yields its accepted drafts + one target token
            extra = {"drafted": draft.proposed - d0, "accepted": max(len(ids) - passes, 0)}
        if first:  # the prompt's pass and first token, apart from the decoding after it
            extra.update(prefill_bytes_read=first["bytes_read"] - io0, prefill_seconds=first["at"] - t0)
        runs.append({"prompt_index": run["prompt_index"], "temperature": 0.0, "seed": run["seed"],
                     "new_tokens": len(ids), "token_ids": ids, "seconds": seconds,
                     "bytes_read": proc_read_bytes() - io0, "target_passes": passes, **extra})
    import llama_cpp

    result = {"runs": runs, "peak_rss_bytes": peak_rss_bytes(), "threads": int(job["threads"]),
              "process_seconds": time.perf_counter() - started,
              "llama_cpp_version": getattr(llama_cpp, "__version__", "?"),
              "draft_tokens": draft.k if draft else None, "use_mmap": True}
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
