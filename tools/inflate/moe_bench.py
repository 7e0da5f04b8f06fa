"""Expert reads on a mixture-of-experts store under a memory cap: O_DIRECT with specdec's expert
cache, the same with each prefetch guess, buffered reads left to the page cache, and (with a draft) chain
speculation. Each contender runs in its own child process inside a fresh memory cgroup (the
cap covers the process and the page cache it fills) after the store's pages are evicted, and
prints tokens/s, bytes read per token (/proc/self/io), the expert figures, the ISA. A timing
benchmark: run it on an idle machine.

    python -m tools.inflate moe-bench STORE --cap 4GB [--draft specdec/demo_draft] [--tokens 32]
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# KV positions planned for: the chat prompts and replies need a few hundred; the model's 4096
# would give ~10% of a 4 GB cap to KV that the expert cache could use (llama.cpp's row, too,
# gets a context of what its runs need).
MAX_CONTEXT = 1024
CONTENDERS = {  # name: load settings beyond the store and the budget
    "plain-direct": {},
    "plain-direct-prefetch-prev": {"expert_prefetch": "previous-pass"},
    "plain-direct-prefetch-next": {"expert_prefetch": "next-router"},
    "plain-page-cache": {"expert_reads": "page-cache"},
    "chain-direct": {"draft": True},
    "chain-direct-prefetch-next": {"draft": True, "expert_prefetch": "next-router"},
    # a conversation: the prompts as successive user turns, the KV and the expert cache kept
    # between them (rows: per turn, the decode's bytes and expert hit rate beside a cold read)
    "chat-direct": {"chat": True},
}


def run_all(store: Path, cap: int, prompts: list[str], tokens: int, draft: Path | None,
            timeout: float, only: set[str] | None = None, on_row=None) -> list[dict]:
    """The rows, each in a fresh cgroup; `on_row(rows)` after each (the CLI saves what it has,
    so a run stopped from outside keeps its finished rows)."""
    from specdec.bench.memcap import MemoryCap, evict_page_cache

    rows = []
    for name, settings in CONTENDERS.items():
        if (settings.get("draft") and draft is None) or (only and name not in only):
            continue
        evict_page_cache([store])
        job = {"store": str(store), "ram": cap, "prompts": prompts, "tokens": tokens,
               "settings": {**settings, "draft": str(draft) if settings.get("draft") else None}}
        group = MemoryCap.create(cap)
        try:
            row = _child(job, group, timeout)
            peak = group.peak_bytes() if group is not None else None
        finally:
            if group is not None:
                group.close()
        rows.append({"contender": name, "cgroup": group is not None, "peak_cgroup_bytes": peak, **row})
        if on_row is not None:
            on_row(rows)
    return rows


def _child(job: dict, group, timeout: float) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "tools.inflate.moe_bench", json.dumps(job)],
                            stdout=subprocess.PIPE, text=True)
    if group is not None:
        group.add(proc.pid)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}" + (" (OOM-killed?)" if proc.returncode == -9 else "")}
    return json.loads(out.strip().splitlines()[-1])


def worker(job: dict) -> dict:
    """In the child: load, warm up on a few tokens, then time the prompts (each whole, and its
    decode apart: the rows' `decode` figures)."""
    import torch

    import specdec
    from specdec.moe_stats import expert_figures

    from .moe_routing import as_chat

    s = job["settings"]
    if s.get("chat"):
        return chat_worker(job)
    lm = specdec.load(job["store"], ram=job["ram"], draft=s.get("draft"), progress=False,
                      max_context=job.get("max_context", MAX_CONTEXT),
                      expert_prefetch=s.get("expert_prefetch", False),
                      expert_reads=s.get("expert_reads", "direct"))
    with lm:
        lm.generate(as_chat(lm, job["prompts"][0]), max_new_tokens=2)
        runs = [_prompt_run(lm, as_chat(lm, prompt), job["tokens"]) for prompt in job["prompts"]]
        whole, decode = _sum_runs(runs, "whole"), _sum_runs(runs, "decode")
        tokens, passes = whole["tokens"], whole["passes"]
        model = byte_model(lm)
        return {"isa": torch.backends.cpu.get_cpu_capability(), "tokens": tokens, "seconds": whole["seconds"],
                "tokens_per_second": tokens / whole["seconds"], "bytes_read_per_token": whole["read"] / tokens,
                "tokens_per_pass": tokens / passes, "plan": lm.plan.summary if lm.plan else None,
                "threads": torch.get_num_threads(), "eos_ids": sorted(lm.eos_ids),
                "greedy": [r["greedy"] for r in runs], "passes": passes, "source_counters": whole["source"],
                "decode": {"tokens": decode["tokens"], "passes": decode["passes"],
                           "seconds": decode["seconds"], "bytes_read": decode["read"],
                           **ideal_bytes(model, decode),
                           **expert_figures(decode["source"], decode["passes"], decode["tokens"])},
                "byte_model": model, **expert_figures(whole["source"], passes, tokens)}


def chat_worker(job: dict) -> dict:
    """A conversation, cold: the prompts as successive user turns (the reply of each kept in
    the history), the caches kept between turns (lm.chat's reuse: a turn prefills only what is
    new). Per turn, its prefill pass and its decode apart, with the decode's bytes read
    (/proc), the expert hit rate and what the same passes would read with no expert cache."""
    import torch

    import specdec
    from specdec.moe_stats import expert_figures

    lm = specdec.load(job["store"], ram=job["ram"], progress=False,
                      max_context=job.get("max_context", MAX_CONTEXT))
    with lm:
        model = byte_model(lm)
        template = lm.has_chat_template()
        history: list = []  # messages under a chat template; else the conversation's token ids
        turns = []
        for prompt in job["prompts"]:
            if template:
                history.append({"role": "user", "content": prompt})
            else:  # token-id turns (a model without a tokenizer): appended to the context
                history += lm.encode(prompt)
            run = _prompt_run(lm, lm.encode_chat(history) if template else history, job["tokens"], reset=False)
            reply = run["greedy"]["token_ids"]
            if template:
                history.append({"role": "assistant", "content": lm.tokenizer.decode(
                    [t for t in reply if t not in lm.eos_ids], skip_special_tokens=True)})
            else:
                history += reply
            d = run["decode"]
            turns.append({"prompt_tokens": len(run["greedy"]["prompt_ids"]), "tokens": run["whole"]["tokens"],
                          "seconds": run["whole"]["seconds"], "bytes_read": run["whole"]["read"],
                          "decode": {"tokens": d["tokens"], "passes": d["passes"], "seconds": d["seconds"],
                                     "bytes_read": d["read"], **ideal_bytes(model, d),
                                     **expert_figures(d["source"], d["passes"], d["tokens"])}})
        tokens = sum(t["tokens"] for t in turns)
        seconds = sum(t["seconds"] for t in turns)
        later = [t["decode"] for t in turns[1:] if t["decode"]["tokens"]]
        decode = _merge_decodes([t["decode"] for t in turns])  # the row's figures: its turns' decodes
        return {"isa": torch.backends.cpu.get_cpu_capability(), "tokens": tokens, "seconds": seconds,
                "tokens_per_second": tokens / seconds, "bytes_read_per_token": sum(t["bytes_read"] for t in turns) / tokens,
                "tokens_per_pass": 1.0, "plan": lm.plan.summary if lm.plan else None,
                "threads": torch.get_num_threads(), "byte_model": model, "turns": turns,
                "decode": decode, "later_turns_decode": _merge_decodes(later),
                **({"expert_hit_rate": decode["expert_hit_rate"]} if "expert_hit_rate" in decode else {})}


def _merge_decodes(parts: list[dict]) -> dict:
    """Decode figures of several turns summed (the rates re-weighted by tokens / routed experts)."""
    if not parts:
        return {}
    keys = ("tokens", "passes", "seconds", "bytes_read", "ideal_cold_bytes", "asked_bytes")
    total = {k: sum(p.get(k, 0) for p in parts) for k in keys}
    used = sum(p.get("experts_per_layer_pass", 0) for p in parts)
    if used:
        total["expert_hit_rate"] = sum(p.get("expert_hit_rate", 0) * p.get("experts_per_layer_pass", 0)
                                       for p in parts) / used
    return total


def byte_model(lm) -> dict:
    """What a pass must read at least: the dense parts of the layers not pinned (streamed every
    pass) and, per routed expert not in RAM, one extent (the mean extent of the store)."""
    w = lm.target.model.weights
    store = w.store
    extents = [x.nbytes for i in range(store.num_layers) for x in store.expert_extents(i)] if store.has_experts else []
    return {"dense_streamed_bytes_per_pass": sum(store.layer_nbytes(i) for i in w.streamed_layers),
            "expert_extent_bytes": sum(extents) / len(extents) if extents else 0}


def ideal_bytes(model: dict, part: dict) -> dict:
    """For a run's part (its passes and expert counters): `ideal_cold_bytes`, what its passes
    would read with no expert cache (the dense parts not pinned + every routed expert once per
    layer and pass), and `asked_bytes`, what the weight source asked the disk for (the dense
    parts + the expert extents it read). Bytes read from /proc over the first: the goal of <= 1.1
    with a cold cache; over the second: what reads cost beyond what was asked (<= 1: none)."""
    source = part.get("source", {})
    dense = model["dense_streamed_bytes_per_pass"] * part.get("passes", 0)
    return {"ideal_cold_bytes": dense + source.get("experts_used", 0) * model["expert_extent_bytes"],
            "asked_bytes": dense + source.get("expert_bytes_read", 0)}


def _prompt_run(lm, ids, tokens: int, reset: bool = True) -> dict:
    """One prompt from a cold context: the prefill pass with the first token, then the rest
    of the reply as a continuation (the cached prefix is kept), measured apart: the decode
    figures are what a generated token costs without the prompt's union of experts."""
    from specdec.bench.iobench import proc_read_bytes

    if reset:
        lm.reset()
    parts = {}
    prompt = lm.encode(ids)
    reply: list[int] = []
    for part, (context, n) in (("prefill", (prompt, 1)), ("decode", (None, tokens - 1))):
        if n <= 0:
            break
        read0, t0 = proc_read_bytes(), time.perf_counter()
        out = lm.generate(context if context is not None else prompt + reply, max_new_tokens=n)
        parts[part] = {"tokens": out.stats.new_tokens, "passes": out.stats.target_passes,
                       "seconds": time.perf_counter() - t0, "read": proc_read_bytes() - read0,
                       "source": dict(out.stats.source)}
        reply += out.token_ids
        if set(lm.eos_ids) & set(out.token_ids):
            break
    decode = parts.get("decode", {"tokens": 0, "passes": 0, "seconds": 0.0, "read": 0, "source": {}})
    return {"greedy": {"prompt_ids": prompt, "token_ids": reply}, "decode": decode,
            "whole": _sum_runs([{"x": parts["prefill"]}, {"x": decode}], "x")}


def _sum_runs(runs: list[dict], part: str) -> dict:
    total = {"tokens": 0, "passes": 0, "seconds": 0.0, "read": 0, "source": {}}
    for run in runs:
        p = run[part]
        for k in ("tokens", "passes", "seconds", "read"):
            total[k] += p[k]
        for k, v in p["source"].items():
            total["source"][k] = total["source"].get(k, 0) + v
    return total


def raw_expert_read(store: Path) -> dict:
    """O_DIRECT speed of reading the first layers' experts files whole (the disk, this run)."""
    from offload.format import open_store
    from specdec.bench.iobench import time_raw_read

    s = open_store(store)
    files = [s.expert_file(i) for i in range(min(4, s.num_layers))]
    seconds, nbytes, direct = time_raw_read(files)
    return {"raw_bytes": nbytes, "raw_seconds": seconds, "raw_gb_per_s": nbytes / seconds / 1e9,
            "o_direct": direct}


def table(rows: list[dict], raw: dict) -> str:
    lines = [f"raw O_DIRECT read: {raw['raw_gb_per_s']:.2f} GB/s ({raw['raw_bytes'] / 1e9:.2f} GB)",
             "contender | ISA | tok/s | MB read/token | floor ms/token | decode MB read/token | "
             "experts/layer/pass | expert hit | guess right | tokens/pass | cgroup peak MB | "
             "decode read / cold ideal | decode read / asked"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['contender']} | {'' if r.get('skipped') else 'failed: '}{r['error']}")
            continue
        floor = r["bytes_read_per_token"] / (raw["raw_gb_per_s"] * 1e9) * 1e3
        peak = r["peak_cgroup_bytes"] / 1e6 if r.get("peak_cgroup_bytes") else float("nan")
        lines.append(f"{r['contender']} | {r['isa']} | {r['tokens_per_second']:.3f} | "
                     f"{r['bytes_read_per_token'] / 1e6:.1f} | {floor:.0f} | {_decode_mb(r)} | "
                     f"{_figure(r, 'experts_per_layer_pass')} | {_figure(r, 'expert_hit_rate')} | "
                     f"{_figure(r, 'expert_guess_right')} | {r['tokens_per_pass']:.2f} | {peak:.0f} | "
                     f"{_ratio(r, 'ideal_cold_bytes')} | {_ratio(r, 'asked_bytes')}")
        for i, turn in enumerate(r.get("turns", [])):
            d = turn["decode"]
            lines.append(f"  turn {i + 1}: {turn['prompt_tokens']} prompt tokens, {d['tokens']} decoded, "
                         f"{_decode_mb(turn)} MB read/token, expert hit {_figure(d, 'expert_hit_rate')}, "
                         f"cold {d['ideal_cold_bytes'] / d['tokens'] / 1e6 if d['tokens'] else 0:.1f} MB/token")
    return "\n".join(lines)


def _ratio(row: dict, key: str) -> str:
    """The decode's bytes read (/proc) over a byte model's figure ("-" where a row has none)."""
    d = row.get("decode") or {}
    return f"{d['bytes_read'] / d[key]:.2f}" if d.get(key) else "-"


def _decode_mb(row: dict) -> str:
    """MB read per token after each prompt's prefill pass ("-" where a row has no such split)."""
    d = row.get("decode") or {}
    return f"{d['bytes_read'] / d['tokens'] / 1e6:.1f}" if d.get("tokens") else "-"


def _figure(row: dict, key: str) -> str:
    """A figure the contender has, or "-" (the page cache has no hit rate of specdec's cache,
    llama.cpp no expert figures)."""
    return f"{row[key]:.2f}" if row.get(key) is not None else "-"


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
