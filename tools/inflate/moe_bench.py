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

CONTENDERS = {  # name: load settings beyond the store and the budget
    "plain-direct": {},
    "plain-direct-prefetch-prev": {"expert_prefetch": "previous-pass"},
    "plain-direct-prefetch-next": {"expert_prefetch": "next-router"},
    "plain-page-cache": {"expert_reads": "page-cache"},
    "chain-direct": {"draft": True},
}


def run_all(store: Path, cap: int, prompts: list[str], tokens: int, draft: Path | None,
            timeout: float, only: set[str] | None = None) -> list[dict]:
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
    """In the child: load, warm up on a few tokens, then time the prompts."""
    import torch

    import specdec
    from specdec.bench.iobench import proc_read_bytes

    from .moe_routing import as_chat

    s = job["settings"]
    lm = specdec.load(job["store"], ram=job["ram"], draft=s.get("draft"), progress=False,
                      expert_prefetch=s.get("expert_prefetch", False),
                      expert_reads=s.get("expert_reads", "direct"))
    with lm:
        lm.generate(as_chat(lm, job["prompts"][0]), max_new_tokens=2)
        tokens = passes = 0
        read0, t0 = proc_read_bytes(), time.perf_counter()
        source: dict = {}
        greedy = []  # per prompt: what another runtime is given and should answer (greedy)
        for prompt in job["prompts"]:
            lm.reset()
            ids = as_chat(lm, prompt)
            out = lm.generate(ids, max_new_tokens=job["tokens"])
            greedy.append({"prompt_ids": lm.encode(ids), "token_ids": out.token_ids})
            tokens, passes = tokens + out.stats.new_tokens, passes + out.stats.target_passes
            for k, v in out.stats.source.items():
                source[k] = source.get(k, 0) + v
        seconds, read = time.perf_counter() - t0, proc_read_bytes() - read0
        from specdec.moe_stats import expert_figures

        return {"isa": torch.backends.cpu.get_cpu_capability(), "tokens": tokens, "seconds": seconds,
                "tokens_per_second": tokens / seconds, "bytes_read_per_token": read / tokens,
                "tokens_per_pass": tokens / passes, "plan": lm.plan.summary if lm.plan else None,
                "threads": torch.get_num_threads(), "eos_ids": sorted(lm.eos_ids), "greedy": greedy,
                **expert_figures(source, passes, tokens)}


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
             "contender | ISA | tok/s | MB read/token | floor ms/token | experts/layer/pass | "
             "expert hit | tokens/pass | cgroup peak MB"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['contender']} | {'' if r.get('skipped') else 'failed: '}{r['error']}")
            continue
        floor = r["bytes_read_per_token"] / (raw["raw_gb_per_s"] * 1e9) * 1e3
        peak = r["peak_cgroup_bytes"] / 1e6 if r.get("peak_cgroup_bytes") else float("nan")
        lines.append(f"{r['contender']} | {r['isa']} | {r['tokens_per_second']:.3f} | "
                     f"{r['bytes_read_per_token'] / 1e6:.1f} | {floor:.0f} | "
                     f"{_figure(r, 'experts_per_layer_pass')} | {_figure(r, 'expert_hit_rate')} | "
                     f"{r['tokens_per_pass']:.2f} | {peak:.0f}")
    return "\n".join(lines)


def _figure(row: dict, key: str) -> str:
    """A figure the contender has, or "-" (the page cache has no hit rate of specdec's cache,
    llama.cpp no expert figures)."""
    return f"{row[key]:.2f}" if row.get(key) is not None else "-"


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
