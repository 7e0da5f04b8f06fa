"""`specdec bench offload`: specdec against the physical floor and transformers + accelerate,
every contender in its own process under the same RAM cap.

Per workload (specdec/bench/workloads.py) the contenders run in this order:
  floor       O_DIRECT read of the bytes one streamed pass reads (+ pass time vs tokens)
  plain       specdec, target streamed, no draft
  chain       specdec speculative, chain drafts
  tree        specdec speculative, draft tree
  overlap     specdec speculative, overlapped tree (when this specdec has it)
  self_draft  specdec self-speculation (when this specdec has it)
  strong_chain, strong_tree, strong_overlap  "chain (strong pair)", "tree (strong pair)",
              "overlap (strong pair)": the inflated target with the STRONG-PAIR draft (its own
              4-bit copy at a 0.5B-class cost, strong_pair.py) instead of the demo draft;
              inflated workloads only
  llamacpp    llama.cpp (llama-cpp-python) on the GGUF of the same target, mmap, greedy
  llamacpp_spec the same with the draft's GGUF proposing greedy tokens (llama_worker.py)
  hf          transformers generate, accelerate disk offload (device_map="auto")
  hf_assisted the same with assisted generation (the same draft, in RAM)
The llama.cpp contenders run specdec/bench/llama_worker.py with `--llama-python` (default:
this interpreter when it can import llama_cpp; else they are skipped, with one line saying so).
A workload may skip contenders (Workload.skip): the report says why.
The accelerate contenders get, as max_memory for target weights, what specdec's plan under
the same cap spent on target weights (resident part + pinned layers + stream buffers), so
both keep the same share of the target in RAM.

The cap: a memory cgroup (specdec/bench/memcap.py) with the workload's RAM as limit, covering the
page cache too; without one, the page cache of the workload's files is evicted before each
run and the report says the cap was not enforced.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import strong_pair
from .memcap import MemoryCap, evict_page_cache
from .workloads import Workload

JOB_TIMEOUT_S = 3600
PASS_TOKENS = [1, 8, 32, 64]


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # floor | specdec | llama | hf
    draft: bool = False
    speculation: str = "chain"
    label: str = ""
    # "self": the target drafts for itself (specdec.load(draft="self")); another name: the
    # workload's draft of that name (Workload.drafts), e.g. "strong" (strong_pair.py)
    draft_source: str = ""


CONTENDERS = (
    Contender("floor", "floor", label="physical floor (O_DIRECT read of one pass)"),
    Contender("plain", "specdec", label="specdec plain streamed"),
    Contender("chain", "specdec", True, "chain", label="specdec speculative (chain)"),
    Contender("tree", "specdec", True, "tree", label="specdec speculative (tree)"),
    Contender("overlap", "specdec", True, "overlap",
              label="specdec speculative (tree grown while the target streams)"),
    Contender("self_draft", "specdec", True, "chain", draft_source="self",
              label="specdec self-draft (4-bit substitutes of the target's streamed layers)"),
    *(Contender(name, "specdec", True, spec, label=strong_pair.LABEL.format(spec=spec),
                draft_source=strong_pair.SOURCE) for name, spec in strong_pair.CONTENDERS.items()),
    Contender("llamacpp", "llama", label="llama.cpp (mmap, greedy)"),
    Contender("llamacpp_spec", "llama", True, label="llama.cpp speculative (draft GGUF, greedy)"),
    Contender("hf", "hf", label="transformers + accelerate offload"),
    Contender("hf_assisted", "hf", True, label="transformers + accelerate, assisted generation"),
)


LLAMA_WORKER = Path(__file__).with_name("llama_worker.py")  # run by path: see its docstring
LLAMA_MISSING = ("llama.cpp contender skipped: llama-cpp-python not importable "
                 "(pip install 'specdec[bench]')")


def llama_python(requested: str | None) -> tuple[str | None, str]:
    """The interpreter for llama_worker.py, or (None, why) when none can import llama_cpp."""
    py = requested or sys.executable
    try:
        ok = subprocess.run([py, "-c", "import llama_cpp"], capture_output=True,
                            timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{LLAMA_MISSING}; {py}: {e}"
    if ok:
        return py, ""
    return None, LLAMA_MISSING + (f" by {py}" if requested else "")


def run_bench(workloads: list[Workload], out_dir: Path, threads: int, use_cgroup: bool = True,
              log=print, only: set[str] | None = None, llama_py: str | None = None,
              llama_why: str = LLAMA_MISSING, draft_tokens: int = 8,
              timeout: float = JOB_TIMEOUT_S, tree_nodes: int | None = None) -> dict:
    """Run every contender (or those named in `only`) on every workload; return the report
    dict (see specdec/bench/report.py). `llama_py`: the interpreter of the llama.cpp
    contenders (None: they are skipped with `llama_why`); `timeout`: seconds per contender (a
    contender past it is killed and its row says so); `tree_nodes`: a fixed tree size for the
    tree and overlap contenders (None: the cost model sizes each pass's tree)."""
    contenders = [c for c in CONTENDERS if not only or c.name in only]
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "threads": threads,
              "machine": machine_info(threads), "workloads": [], "contenders": [c.__dict__ for c in contenders]}
    methods = set()
    for w in workloads:
        results = {}
        for c in contenders:
            why = skip_reason(w, c, llama_py, llama_why)
            if why:
                results[c.name] = {"ok": False, "skipped": True, "error": f"skipped: {why}"}
                log(f"[{w.name}] {c.name}: skipped: {why}")
                continue
            log(f"[{w.name}] {c.name} ...")
            results[c.name] = run_contender(w, c, threads, use_cgroup, out_dir, results,
                                            llama_py, draft_tokens, timeout, tree_nodes)
            methods.add(results[c.name]["cap_method"])
            log(f"[{w.name}] {c.name}: {_brief(results[c.name])}")
        add_texts(w, results)
        report["workloads"].append({"workload": w.as_dict(), "results": results})
    report["cap_methods"] = sorted(methods)
    return report


def skip_reason(w: Workload, c: Contender, llama_py: str | None, llama_why: str) -> str:
    if c.name in w.skip:
        return w.skip[c.name]
    if c.kind == "llama":
        if llama_py is None:
            return llama_why
        if not w.gguf or (c.draft and not w.draft_gguf):
            return "no GGUF of this workload's target (or draft) for llama.cpp"
    if c.draft and not w.draft and not c.draft_source:
        return "no draft"
    if c.draft_source and c.draft_source != "self" and c.draft_source not in w.drafts:
        return strong_pair.NOT_HERE if c.draft_source == strong_pair.SOURCE else f"no {c.draft_source} draft"
    if c.draft_source == "self" and w.store:
        why = _self_draft_refusal(w.store)
        if why:
            return why
    if c.draft_source == "self" and w.stream_all:
        return ("--stream-all: the self-draft's plan has no 'least budget' form (its substitutes "
                "take what the budget leaves); run it under a given --ram")
    return ""


def _self_draft_refusal(store_path: str) -> str:
    """Why specdec refuses draft="self" on this target (a quantized store), or ""."""
    from offload.format import open_store

    from ..self_draft import SelfDraftError, check_target

    try:
        check_target(open_store(store_path))
    except SelfDraftError:
        return ("a self-draft is made of 4-bit substitutes of a bf16 target's layers; specdec "
                "refuses it on a quantized target (specdec/self_draft.py)")
    return ""


def run_contender(w: Workload, c: Contender, threads: int, use_cgroup: bool, out_dir: Path,
                  earlier: dict | None = None, llama_py: str | None = None,
                  draft_tokens: int = 8, timeout: float = JOB_TIMEOUT_S,
                  tree_nodes: int | None = None) -> dict:
    cpu = hf_cpu_bytes(w, c, earlier or {}) if c.kind == "hf" else None
    job = {"contender": c.__dict__, "threads": threads, "pass_tokens": PASS_TOKENS,
           "draft_tokens": draft_tokens, "tree_nodes": tree_nodes,
           "workload": {**w.as_dict(), "hf_cpu_bytes": cpu},
           "runs": [{"prompt_index": i, "prompt_ids": p, "temperature": t, "seed": 1234 + i,
                     "max_new_tokens": w.max_new_tokens}
                    for t in w.temperatures for i, p in enumerate(w.prompts)]}
    evicted = evict_page_cache(w.data_paths())
    cap = MemoryCap.create(w.ram_bytes) if use_cgroup else None
    try:
        if c.kind == "llama":  # by path: the llama venv may have no torch (nor specdec)
            cmd = [llama_py, str(LLAMA_WORKER)]
        else:
            cmd = [sys.executable, "-m", "specdec.bench.worker"]
        result = spawn_worker(job, cap, out_dir / "logs" / f"{w.name}-{c.name}.log", cmd, timeout)
        result["cap_peak_bytes"] = cap.peak_bytes() if cap else None
        result["oom_kills"] = cap.oom_kills() if cap else 0
    finally:
        if cap:
            cap.close()
    result["cap_method"] = cap.description.split(" at ")[0] if cap else "none (page cache evicted only)"
    result["evicted"] = evicted
    result["hf_cpu_bytes"] = job["workload"]["hf_cpu_bytes"] if c.kind == "hf" else None
    return result


def add_texts(w: Workload, results: dict) -> None:
    """Decode every run's tokens with the workload's tokenizer (one decoder for all
    contenders, so texts compare like for like)."""
    if not w.tokenizer_dir:
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(w.tokenizer_dir)
    for r in results.values():
        for run in r.get("runs", []) if r.get("ok") else []:
            run["text"] = tok.decode(run["token_ids"], skip_special_tokens=False)


def hf_cpu_bytes(w: Workload, c: Contender, earlier: dict) -> int:
    """RAM for accelerate to keep target weights in: what specdec's plan under the same cap
    gives target weights (resident part, pinned layers, stream buffers); the plain plan for
    plain generate, the plan with the draft for assisted generation. Taken from the specdec
    run when it ran (the plan load() really made), else computed the same way."""
    from offload.budget import BudgetError

    from .workloads import minimum_budget, specdec_plan

    plan = earlier.get("chain" if c.draft else "plain", {}).get("plan")
    if plan:
        return plan["resident_bytes"] + plan["pinned_bytes"] + plan["ring_bytes"]
    draft = w.draft if c.draft else None
    ram = minimum_budget(w.store, draft, w.max_context, w.dtype) if w.stream_all else w.ram_bytes
    try:
        p = specdec_plan(w.store, draft, ram, w.max_context, w.dtype)
    except BudgetError:
        return 1  # specdec cannot run under this cap either: accelerate offloads everything
    return p.resident_bytes + p.pinned_bytes + p.ring_bytes


def spawn_worker(job: dict, cap: MemoryCap | None, log_path: Path, cmd: list[str],
                 timeout: float = JOB_TIMEOUT_S) -> dict:
    """Run `cmd JOB.json RESULT.json` under `cap` (None: uncapped), its output in `log_path`;
    the result file's contents with ok=True, else ok=False and why (and the log's tail)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="specdec-bench-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job))
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(job["threads"]),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        cmd = [*cmd, str(job_file), str(out_file)]
        # The child joins the cgroup before exec, so everything it loads is under the cap.
        # cwd: the directory holding the `specdec` package, so `-m` finds this very copy
        # when it runs from a source checkout (an installed copy is found anyway).
        pre = (lambda: cap.add(os.getpid())) if cap else None
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=pre, timeout=timeout,
                                    cwd=Path(__file__).resolve().parents[2]).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        wall = time.perf_counter() - t0
        if rc == 0 and out_file.exists():
            return {**json.loads(out_file.read_text()), "ok": True, "wall_seconds": wall}
    tail = log_path.read_text()[-1500:]
    why = ("killed: out of memory under the cap" if rc in (-9, 137) else
           f"timed out after {timeout:.0f} s" if rc == "timeout" else f"exit status {rc}")
    last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
    if rc not in (-9, 137) and "Error" in last:  # the worker's own clear error, e.g. a BudgetError
        why += f" ({last.strip()[:600]})"
    return {"ok": False, "error": f"{why}; log {log_path}", "log_tail": tail, "wall_seconds": wall}


def _brief(r: dict) -> str:
    if not r.get("ok"):
        return "FAILED " + r["error"]
    if "floor" in r:
        f = r["floor"]
        return f"{f['streamed_bytes'] / 1e6:.0f} MB in {f['raw_seconds'] * 1e3:.0f} ms"
    tok = sum(x["new_tokens"] for x in r["runs"])
    sec = sum(x["seconds"] for x in r["runs"])
    return f"{tok} tokens in {sec:.1f} s ({sec / max(tok, 1) * 1e3:.0f} ms/token)"


def machine_info(threads: int | None = None) -> dict:
    """The machine, its instruction set and the matmul paths specdec's contenders use on it
    (the kernel probe the workers load, timed at the workers' thread count)."""
    import platform

    import psutil
    import torch

    from ..compute.probe import cpu_model
    from ..compute.probe_cache import load_or_probe
    from ..cache_root import cache_root

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        policy = load_or_probe(cache_root(), progress=True)
    finally:
        torch.set_num_threads(before)
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "ram_bytes": psutil.virtual_memory().total, "python": platform.python_version(),
            "torch": torch.__version__, "kernel": platform.release(),
            "cpu_model": cpu_model(), "isa": policy.machine.get("isa"),
            "bf16_instructions": policy.machine.get("bf16_instructions"),
            "kernels": policy.summary(), "kernel_probe_ms": policy.as_dict()["timings_ms"]}


# -- the command ---------------------------------------------------------------------------
SYNTHETIC_SIZES = {"llama2-7b": 13.5e9, "qwen2.5-7b": 15.2e9, "llama-1b": 2.2e9}


def cmd_bench_offload(args) -> int:
    """`specdec bench offload`: build the workloads, run, write JSON + markdown + PNGs."""
    from .report import markdown_table, write_report
    from .workloads import bench_cache

    if args.rebuild:  # re-render a finished run's report (tables, goals, plots) from its JSON
        out = Path(args.rebuild)
        report = json.loads((out / "report.json").read_text())
        print(markdown_table(write_report(report, out) and report["rows"]))
        return 0
    out = Path(args.out or f"results/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    only = {c.strip() for c in (args.contenders or "").split(",") if c.strip()} or None
    unknown = (only or set()) - {c.name for c in CONTENDERS}
    if unknown:
        print(f"specdec: error: unknown contender(s) {sorted(unknown)}; choose from "
              f"{[c.name for c in CONTENDERS]}", file=sys.stderr)
        return 2
    wants_llama = not only or bool(only & {"llamacpp", "llamacpp_spec"})
    llama_py, llama_why = llama_python(args.llama_python) if wants_llama else (None, "not asked for")
    if wants_llama and llama_py is None:
        print(llama_why, file=sys.stderr)
    tree_nodes = getattr(args, "tree_nodes", None)
    if tree_nodes is not None and tree_nodes < 1:
        print(f"specdec: error: --tree-nodes {tree_nodes}: a tree needs at least 1 node (leave it out "
              "for trees sized per pass by the cost model)", file=sys.stderr)
        return 2
    workloads, notes = build_workloads(args, bench_cache(args.cache_dir), llama=llama_py is not None)
    if tree_nodes is not None:
        notes.append(f"the tree and overlap contenders drafted fixed {tree_nodes}-node trees (--tree-nodes)")
    for w in workloads:
        w.max_new_tokens = args.max_new_tokens or w.max_new_tokens
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if not workloads:
        print("specdec: error: no workload could be prepared (see the notes above)", file=sys.stderr)
        return 2
    report = run_bench(workloads, out, args.threads or os.cpu_count() or 1,
                       use_cgroup=not args.no_cgroup, log=lambda s: print(s, file=sys.stderr),
                       only=only, llama_py=llama_py, llama_why=llama_why,
                       draft_tokens=args.draft_tokens, tree_nodes=tree_nodes,
                       timeout=getattr(args, "timeout", None) or JOB_TIMEOUT_S)
    report["notes"] = notes
    report["command"] = " ".join(sys.argv)
    paths = write_report(report, out)
    print(markdown_table(report["rows"]))
    print("\n".join(f"{k}: {p}" for k, p in paths.items()))
    return 0


def build_workloads(args, cache: Path, llama: bool = False) -> tuple[list[Workload], list[str]]:
    """The workloads asked for; `llama`: also write the GGUFs llama.cpp needs where they are
    cheap (the demo draft, a --target pair)."""
    from . import inflated
    from .workloads import custom_workload, demo_workload, load_prompt_config, synthetic_workload

    if args.target:  # the user's own pair replaces the built-in workloads
        if not args.draft:
            raise ValueError("--target needs --draft (the pair to benchmark)")
        prompts = load_prompt_config()["demo"]["prompts"][:1 if args.quick else None]
        w = custom_workload(Path(args.target).name, Path(args.target), Path(args.draft), cache,
                            args.ram or "4GB", prompts, max_new_tokens=16 if args.quick else 64,
                            dtype=args.dtype, stream_all=args.stream_all, gguf=llama)
        return [w], []
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
    workloads, notes = [], []
    if "demo" in wanted:
        try:
            workloads.append(demo_workload(cache, args.quick, draft=args.draft, ram=args.demo_ram,
                                           gguf=llama))
        except FileNotFoundError as e:
            notes.append(f"demo workload skipped: {e}")
    if "synthetic" in wanted:
        preset, why = synthetic_preset(args, cache)
        if why:
            notes.append(why)
        ram = args.synthetic_ram or ("1GB" if args.quick else "4GB")
        workloads.append(synthetic_workload(cache, preset, args.quick, ram))
    for name in inflated.names(wanted):
        workloads.append(inflated.big_workload(
            name, cache, n_prompts=args.prompts, max_new_tokens=args.max_new_tokens or (16 if args.quick else 48),
            with_hf=args.with_hf, ram=getattr(args, name.replace("-", "_") + "_ram", None),
            context=getattr(args, "context", None)))
    unknown = [n for n in wanted if n not in ("demo", "synthetic") and not inflated.names([n])]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}: choose from demo, synthetic, "
                         f"inflated-7b, {', '.join(inflated.BIG)}")
    return workloads, notes


def synthetic_preset(args, cache: Path) -> tuple[str, str]:
    """The synthetic target's shape: --synthetic, else llama2-7b (llama-1b under --quick);
    a 7B falls back to llama-1b when the disk cannot hold its HF dir and store."""
    import shutil

    preset = args.synthetic or ("llama-1b" if args.quick else "llama2-7b")
    if args.quick or (cache / f"synthetic-{preset}-s0" / "store").exists():
        return preset, ""
    need = 2.2 * SYNTHETIC_SIZES.get(preset, 0)  # HF dir + store + slack
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if free < need:
        return "llama-1b", (f"{preset} needs ~{need / 1e9:.0f} GB of disk, {free / 1e9:.0f} GB free "
                            f"under {cache}: used llama-1b instead")
    return preset, ""
