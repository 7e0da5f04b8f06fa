"""Rows, goals, markdown and plots for `specdec bench offload` reports.

A row is one contender on one workload at one temperature, summed over the prompts:
ms/token = total generate seconds / total new tokens (prefill included, as a user waits for
it), bytes read per token from /proc/<pid>/io, peak RSS of the process, and for speculative
runs the acceptance rate (accepted / drafted), the per-token acceptance (accepted / drafts
offered, engine.GenerationStats.token_acceptance) and new tokens per target pass. The floor
row is the O_DIRECT read time of one pass's streamed bytes: one token per pass, no compute.
"""
from __future__ import annotations

import json
from pathlib import Path

from offload.atomic import write_atomic

from ..moe_stats import add_counters, expert_figures
from . import strong_pair
from .worker import floor_seconds

# each speculative contender -> its own runtime's plain decoding (greedy output must match)
SPECULATIVE = {"chain": "plain", "tree": "plain", "overlap": "plain", "self_draft": "plain",
               "hf_assisted": "hf", "llamacpp_spec": "llamacpp",
               **{name: "plain" for name in strong_pair.CONTENDERS}}
SPECDEC_SPECULATIVE = ("chain", "tree", "overlap", "self_draft")  # the workload's own draft
STRONG = tuple(strong_pair.CONTENDERS)  # the strong-pair draft's rows: goals of their own
LLAMACPP = ("llamacpp", "llamacpp_spec")
# seed-13b (issue 31): the demo draft >= 2x below the floor; the strong pair >= 3x below the
# floor and >= 4x faster than llama.cpp's best
GOALS = {"plain_vs_floor": 1.15, "speculative_vs_plain": 3.0, "speculative_vs_hf_assisted": 10.0,
         "speculative_vs_floor": 2.0, "speculative_vs_llamacpp": 3.0,
         "strong_vs_floor": 3.0, "strong_vs_llamacpp": 4.0}


def build_rows(report: dict) -> list[dict]:
    rows = []
    for entry in report["workloads"]:
        w, results = entry["workload"], entry["results"]
        floor = _floor_row(w["name"], results.get("floor", {"skipped": True, "error": "not run"}))
        rows.append(floor)
        for t in w["temperatures"]:
            for name, r in results.items():
                if name == "floor":
                    continue
                if r.get("ok") and not any(x["temperature"] == t for x in r["runs"]):
                    continue  # a greedy-only contender (llama.cpp) at T > 0
                if r.get("skipped") and t != w["temperatures"][0]:
                    continue  # one line says why

                rows.append(_run_row(w["name"], name, t, r, results, floor))
        _add_llamacpp_ratio(rows, w["name"])
    return rows


def _add_llamacpp_ratio(rows: list[dict], workload: str) -> None:
    """x llama.cpp: ms/token over llama.cpp's best (plain or speculative) at T=0, same run."""
    best = min((r["ms_per_token"] for r in rows if r["workload"] == workload and r["ok"]
                and r["contender"] in LLAMACPP and r["temperature"] == 0 and r.get("ms_per_token")),
               default=None)
    for r in rows:
        if r["workload"] == workload and r["ok"] and r.get("ms_per_token"):
            r["x_llamacpp"] = r["ms_per_token"] / best if best else None


def _floor_row(workload: str, r: dict) -> dict:
    row = {"workload": workload, "contender": "floor", "temperature": None, "ok": r.get("ok", False)}
    if not row["ok"]:
        return {**row, "error": r.get("error", "not run"), "skipped": r.get("skipped", False)}
    f = r["floor"]
    s = floor_seconds(f)
    return {**row, "ms_per_token": s * 1e3, "tokens_per_second": 1 / s if s else None,
            "bytes_read_per_token": f["streamed_bytes"], "peak_rss_bytes": r["peak_rss_bytes"],
            "tokens_per_pass": 1.0, "acceptance_rate": None, "x_floor": 1.0,
            "gb_per_s": f["streamed_bytes"] / s / 1e9 if s else None, "o_direct": f["o_direct"]}


def _run_row(workload: str, name: str, t: float, r: dict, results: dict, floor: dict) -> dict:
    row = {"workload": workload, "contender": name, "temperature": t, "ok": r.get("ok", False)}
    if not row["ok"]:
        return {**row, "error": r.get("error", "not run"), "skipped": r.get("skipped", False)}
    runs = [x for x in r["runs"] if x["temperature"] == t]
    tokens = sum(x["new_tokens"] for x in runs)
    seconds = sum(x["seconds"] for x in runs)
    passes = sum(x.get("target_passes", 0) for x in runs)
    drafted = sum(x.get("drafted", 0) for x in runs)
    accepted = sum(x.get("accepted", 0) for x in runs)
    offered = accepted + sum(x.get("rejected", 0) for x in runs)  # transformers' runs: no count
    ms = seconds / tokens * 1e3 if tokens else None
    row.update(new_tokens=tokens, seconds=seconds, ms_per_token=ms,
               tokens_per_second=tokens / seconds if seconds else None,
               bytes_read_per_token=sum(x["bytes_read"] for x in runs) / tokens if tokens else None,
               peak_rss_bytes=r["peak_rss_bytes"], cap_peak_bytes=r.get("cap_peak_bytes"),
               target_passes=passes, tokens_per_pass=tokens / passes if passes else None,
               acceptance_rate=accepted / drafted if drafted else None,
               drafted_per_pass=drafted / passes if passes and drafted else None,
               token_acceptance=accepted / offered if all("rejected" in x for x in runs) and offered else None,
               x_floor=ms / floor["ms_per_token"] if ms and floor.get("ms_per_token") else None)
    row.update(_draft_figures(runs, passes))
    row.update(_overlap_figures(runs, passes))
    row.update(_expert_figures(runs, passes, tokens))
    if t == 0 and name in SPECULATIVE:  # each against its own runtime's plain decoding
        row["matches_plain"] = _same_tokens(runs, results, SPECULATIVE[name])
    return row


def _expert_figures(runs: list[dict], passes: int, tokens: int) -> dict:
    """A mixture-of-experts target's union per layer and pass, hit rate and expert bytes,
    over the runs' summed counters ({} for a dense target or another runtime)."""
    total: dict[str, float] = {}
    for x in runs:
        add_counters(total, x.get("source_counters") or {})
    return expert_figures(total, passes, tokens)


def _draft_figures(runs: list[dict], passes: int) -> dict:
    """Drafting on the critical path per pass, and the acceptance per draft position (position
    1: the first drafted token of a pass, a tree's first level), summed over the runs."""
    if not passes or not all("position_offered" in x for x in runs):
        return {}  # transformers' and llama.cpp's runs do not count these
    depth = max((len(x["position_offered"]) for x in runs), default=0)

    def summed(key):
        return [sum(x[key][i] for x in runs if i < len(x[key])) for i in range(depth)]
    offered, taken = summed("position_offered"), summed("position_taken")
    drafting = sum(x["draft_seconds"] for x in runs)
    out = {"draft_ms_per_pass": drafting / passes * 1e3,
           "position_acceptance": [round(t / o, 3) for t, o in zip(taken, offered) if o],
           "position_offered": offered}
    if all("draft_catch_up_seconds" in x for x in runs):
        # The draft reading context it missed (a prompt, the tokens of plain passes: catch-ups
        # longer than a decode step, specdec/draft.py) apart from drafting proper, whose cost
        # per drafted token (chain) or node (tree, overlap) then compares drafts like for like.
        catch_up = sum(x["draft_catch_up_seconds"] for x in runs)
        out.update(draft_catch_up_ms_per_pass=catch_up / passes * 1e3,
                   draft_catch_up_tokens=sum(x.get("draft_catch_up_tokens", 0) for x in runs),
                   draft_catch_ups=sum(x.get("draft_catch_ups", 0) for x in runs),
                   draft_ms_per_token=_draft_ms_per_token(runs, drafting, catch_up))
    return out


def _draft_ms_per_token(runs: list[dict], drafting: float, catch_up: float) -> float | None:
    """Drafting proper per drafted token: a chain's, a tree's per node sent. An overlapped
    tree drafts mostly in the disk waits, and for later passes as much as for this one: its
    drafting is all of it (hidden and critical) per node the draft forwarded."""
    def total(key):
        return sum(x.get(key, 0) for x in runs)
    if all("draft_nodes_forwarded" in x for x in runs):
        drafting = total("draft_seconds_hidden") + total("draft_seconds_critical")
        drafted = total("draft_nodes_forwarded")
    else:
        drafted = total("drafted")
    return (drafting - catch_up) / drafted * 1e3 if drafted else None


def _overlap_figures(runs: list[dict], passes: int) -> dict:
    """The overlapped tree's own figures (speculate/overlap.py counters), where runs have them:
    draft time hidden in the target's disk waits vs on the critical path, carried-over trees."""
    def total(key):
        return sum(x.get(key, 0) for x in runs)
    hidden, critical = total("draft_seconds_hidden"), total("draft_seconds_critical")
    if not any("draft_seconds_critical" in x for x in runs):
        return {}
    return {"draft_seconds_hidden": hidden, "draft_seconds_critical": critical,
            "draft_critical_share": critical / (hidden + critical) if hidden + critical else None,
            "target_delay_seconds": total("pass_idle_delay_seconds"),
            "tree_nodes_sent_per_pass": total("tree_nodes_sent") / passes if passes else None,
            "tree_nodes_grown_per_pass": total("tree_nodes_grown") / passes if passes else None,
            "carried_passes_share": total("passes_carried") / passes if passes else None}


def _same_tokens(runs: list[dict], results: dict, reference: str) -> bool | None:
    """Greedy output equal to the same runtime's plain decoding, prompt by prompt."""
    ref = results.get(reference, {})
    if not ref.get("ok"):
        return None
    want = {x["prompt_index"]: x["token_ids"] for x in ref["runs"] if x["temperature"] == 0}
    return all(want.get(x["prompt_index"]) == x["token_ids"] for x in runs)


def goals(rows: list[dict], real_draft: dict[str, bool] | None = None,
          kinds: dict[str, str] | None = None) -> list[dict]:
    """The issue's targets, measured (reported, never asserted). Speculative goals only for
    workloads with a real draft (`real_draft` by workload name; default: all). `kinds`
    (workload -> "inflated-7b" | "seed-13b" | ""): the goals set for the inflated ones."""
    def ms(workload, contender, t):
        for r in rows:
            if (r["workload"], r["contender"], r["temperature"]) == (workload, contender, t):
                return r.get("ms_per_token")
        return None

    def best(workload, names):
        return min((v for v in (ms(workload, n, 0.0) for n in names) if v), default=None)

    def ratio(a, b):
        return a / b if a and b else None

    out = []
    for wl in dict.fromkeys(r["workload"] for r in rows):
        plain, floor = ms(wl, "plain", 0.0), ms(wl, "floor", None)
        spec, llama = best(wl, SPECDEC_SPECULATIVE), best(wl, LLAMACPP)
        kind = (kinds or {}).get(wl, "")
        if kind != "seed-13b":
            out.append(_goal(wl, "plain_vs_floor", "plain streamed ms/token / floor ms/token",
                             ratio(plain, floor), lower_is_better=True))
        if real_draft is not None and not real_draft.get(wl, True):
            continue
        if kind == "seed-13b":
            out.append(_goal(wl, "speculative_vs_floor", "floor ms/token / best speculative ms/token "
                             "(demo draft, T=0)", ratio(floor, spec)))
            out.append(_goal(wl, "speculative_vs_llamacpp",
                             "llama.cpp's best ms/token / best speculative ms/token (demo draft, T=0)",
                             ratio(llama, spec)))
            strong = best(wl, STRONG)
            if strong:
                out.append(_goal(wl, "strong_vs_floor", "floor ms/token / best strong-pair ms/token "
                                 "(T=0)", ratio(floor, strong)))
                out.append(_goal(wl, "strong_vs_llamacpp", "llama.cpp's best ms/token / best "
                                 "strong-pair ms/token (T=0)", ratio(llama, strong)))
            continue
        out.append(_goal(wl, "speculative_vs_plain", "plain ms/token / best speculative ms/token (T=0)",
                         ratio(plain, spec)))
        if kind:
            out.append(_goal(wl, "speculative_vs_llamacpp",
                             "llama.cpp's best ms/token / best speculative ms/token (T=0; not an "
                             "issue-19 goal here, shown for reference)", ratio(llama, spec)))
            continue
        out.append(_goal(wl, "speculative_vs_hf_assisted",
                         "accelerate assisted ms/token / best speculative ms/token (T=0)",
                         ratio(ms(wl, "hf_assisted", 0.0), spec)))
    return out


def _goal(workload, key, what, value, lower_is_better=False) -> dict:
    target = GOALS[key]
    met = None if value is None else (value <= target if lower_is_better else value >= target)
    return {"workload": workload, "goal": key, "measure": what, "value": value,
            "target": f"{'<=' if lower_is_better else '>='} {target}", "met": met}


COLUMNS = [("workload", "workload"), ("T", "temperature"), ("contender", "contender"),
           ("ms/token", "ms_per_token"), ("tokens/s", "tokens_per_second"),
           ("MB read/token", "bytes_read_per_token"), ("peak RSS MB", "peak_rss_bytes"),
           ("accept", "acceptance_rate"), ("a/token", "token_acceptance"), ("tokens/pass", "tokens_per_pass"),
           ("draft ms/pass", "draft_ms_per_pass"), ("catch-up ms/pass", "draft_catch_up_ms_per_pass"),
           ("draft ms/token", "draft_ms_per_token"), ("a by position", "position_acceptance"),
           ("x floor", "x_floor"), ("x llama.cpp", "x_llamacpp"), ("= plain (T=0)", "matches_plain")]


# Shown when some row has them: a mixture-of-experts target's figures (specdec/moe_stats.py).
EXPERT_COLUMNS = [("experts/layer/pass", "experts_per_layer_pass"), ("expert hit", "expert_hit_rate"),
                  ("MB experts/token", "expert_bytes_per_token")]


def markdown_table(rows: list[dict]) -> str:
    columns = COLUMNS + [c for c in EXPERT_COLUMNS if any(c[1] in r for r in rows)]
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        if not r["ok"]:
            why = r["error"] if r.get("skipped") else "failed: " + r["error"].split(";")[0]
            lines.append(f"| {r['workload']} | {_fmt('temperature', r['temperature'])} | "
                         f"{_fmt('contender', r['contender'])} | {why} |" + " |" * (len(columns) - 4))
            continue
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for _, k in columns) + " |")
    return "\n".join(lines)


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "contender":
        return strong_pair.display(v)
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, list):  # per position: the first four
        return " ".join(f"{x:.2f}" for x in v[:4]) or "-"
    if key in ("bytes_read_per_token", "peak_rss_bytes", "expert_bytes_per_token"):
        return f"{v / 1e6:.1f}"
    if key in ("acceptance_rate", "token_acceptance", "expert_hit_rate"):
        return f"{v:.2f}"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def goals_markdown(gs: list[dict]) -> str:
    lines = ["| workload | goal | measured | target | met |", "|---|---|---|---|---|"]
    for g in gs:
        v = "-" if g["value"] is None else f"{g['value']:.2f}"
        met = "-" if g["met"] is None else ("yes" if g["met"] else "no")
        lines.append(f"| {g['workload']} | {g['measure']} | {v} | {g['target']} | {met} |")
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    rows = build_rows(report)
    real = {e["workload"]["name"]: e["workload"].get("real_draft", True) for e in report["workloads"]}
    kinds = {e["workload"]["name"]: e["workload"].get("goals", "") for e in report["workloads"]}
    report["rows"], report["goals"] = rows, goals(rows, real, kinds)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md",
             "ms_per_token_png": out_dir / "ms_per_token.png", "pass_time_png": out_dir / "pass_time.png"}
    write_atomic(paths["json"], json.dumps(report, indent=1))  # --rebuild rewrites it from itself
    write_atomic(paths["markdown"], _markdown_doc(report))
    from .plots import plot_ms_per_token, plot_pass_time

    plot_ms_per_token(rows, paths["ms_per_token_png"])
    plot_pass_time(report, paths["pass_time_png"])
    return paths


def _markdown_doc(report: dict) -> str:
    m = report["machine"]
    head = [f"# specdec bench offload ({report['started']})", "",
            f"Machine: {m['cpu_model'] or m['cpu']}, {m['cores']} cores, "
            f"{m['ram_bytes'] / 1e9:.1f} GB RAM, torch {m['torch']} ({report['threads']} threads), "
            f"kernel {m['kernel']}.",
            f"ISA: {m.get('isa', 'not recorded')} ({'with' if m.get('bf16_instructions') else 'no'} bf16 "
            f"instructions); matmul paths: {m.get('kernels', 'not recorded')}.",
            f"RAM cap: {', '.join(report['cap_methods'])}.", ""]
    for e in report["workloads"]:
        w = e["workload"]
        head.append(f"- {w['name']}: {w['description']}; cap {w['ram_bytes'] / 1e9:.2f} GB; "
                    f"{w['max_new_tokens']} new tokens per prompt")
    if any(r["contender"] in STRONG for r in report["rows"]):
        head += ["", f"Rows \"(strong pair)\": {strong_pair.NOTE}. The other speculative rows use "
                 "the workload's own draft (the demo draft)."]
    return "\n".join(head + ["", markdown_table(report["rows"]), "", "## Goals", "",
                             goals_markdown(report["goals"]), "", "## Details", ""]
                     + details(report) + [f"- note: {n}" for n in report.get("notes", [])] + [""])


def details(report: dict) -> list[str]:
    """Where each contender kept the target: specdec's plans, accelerate's placement."""
    out = []
    for e in report["workloads"]:
        name, res = e["workload"]["name"], e["results"]
        for c in ("plain", "chain", "strong_chain"):
            plan = res.get(c, {}).get("plan")
            if plan:
                out.append(f"- {name} {c}: {plan['summary']}")
        for c in ("hf", "hf_assisted"):
            r = res.get(c, {})
            if r.get("ok"):
                p = r["placement"]
                out.append(f"- {name} {c}: max_memory cpu {r['hf_cpu_bytes'] / 1e6:.0f} MB for "
                           f"target weights; {p['modules_on_disk']} modules offloaded to disk, "
                           f"{p['modules_in_ram']} in RAM")
        f = res.get("floor", {})
        if f.get("ok"):
            fl = f["floor"]
            each = ", ".join(f"{s * 1e3:.0f}" for s in fl["raw_seconds_each"])
            passes = ", ".join(f"{p['tokens']}: {p['seconds'] * 1e3:.0f}" for p in fl["passes"])
            fastest = floor_seconds(fl)  # 0 when the plan streams nothing (all pinned)
            speed = f"{fl['streamed_bytes'] / fastest / 1e9:.2f} GB/s" if fastest > 0 else "nothing read"
            out.append(f"- {name} floor: {fl['streamed_bytes'] / 1e6:.0f} MB per pass; raw O_DIRECT "
                       f"reads {each} ms, prefetcher alone {fl['stream_only_seconds'] * 1e3:.0f} ms "
                       f"(floor = fastest, {speed}); streamed pass ms by tokens verified {passes}")
        for c in ("llamacpp", "llamacpp_spec"):
            r = res.get(c, {})
            if r.get("ok"):
                out.append(f"- {name} {c}: llama-cpp-python {r.get('llama_cpp_version')}, GGUF "
                           f"memory-mapped, {r['threads']} threads, greedy"
                           + (f", {r['draft_tokens']} draft tokens per pass (the draft's GGUF has a "
                              "full output layer: ids outside its partial vocabulary score 0, not "
                              "-inf: the same greedy proposals whenever its best logit is > 0)"
                              if r.get("draft_tokens") else ""))
        peaks = {c: r.get("cap_peak_bytes") for c, r in res.items() if r.get("cap_peak_bytes")}
        if peaks:
            out.append(f"- {name} cgroup peak (process + page cache), MB: "
                       + ", ".join(f"{c} {v / 1e6:.0f}" for c, v in peaks.items()))
    return out
