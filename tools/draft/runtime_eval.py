"""`eval`: the shipped runtime as `specdec chat` runs it, plain decoding vs each speculation
mode on the demo's 20 evaluation prompts, temperature 0, with the lossless check."""
from __future__ import annotations

import json
from pathlib import Path

from specdec.demo_model import find_demo_gguf

from .files import eval_prompts, write_json_atomic

def cmd_eval(args) -> None:
    """The shipped runtime as `specdec chat` runs it: the target packed to a store (its native
    Q4_1 since store format v2; runs before that used a bf16 store) and
    streamed under the demo RAM budget, plain decoding vs each speculation mode, same prompts,
    temperature 0. Lossless check: every prompt's speculative reply equals plain decoding's."""
    from specdec.demo import DEMO_MAX_CONTEXT, DEMO_RAM
    from specdec.session import load, packed_store

    prompts = eval_prompts()[:args.prompts] if args.prompts else eval_prompts()
    modes = [m.strip() for m in args.speculation.split(",") if m.strip()]
    store = packed_store(find_demo_gguf(), "bfloat16", None, True)

    def run(make, label: str, dtype: str, todo: list[str]) -> dict:
        lm = make(dtype)
        rows = []
        try:
            for p in todo:
                lm.reset()
                out = lm.chat([{"role": "user", "content": p}], max_new_tokens=args.max_new_tokens)
                s = out.stats
                rows.append({"prompt": p, "ids": out.token_ids, "text": out.text, **s.to_dict(),
                             "draft_ms_per_token": 0.0, "draft_ms_per_tree_forward": 0.0,
                             **lm.engine.strategy.timings()})
                print(f"[{label} {dtype}] acc {s.acceptance_rate:.2f} (per token {s.token_acceptance:.2f}) "
                      f"tok/pass {s.tokens_per_pass:.2f} "
                      f"passes {s.target_passes} {s.tokens_per_second:.1f} tok/s {p!r}", flush=True)
        finally:
            lm.close()
        return summarise(rows)

    def summarise(rows: list[dict]) -> dict:
        tot = lambda k: sum(r[k] for r in rows)  # noqa: E731
        n = len(rows)
        return {"rows": rows, "acceptance_pooled": tot("accepted") / max(tot("drafted"), 1),
                "acceptance_mean": tot("acceptance_rate") / n,
                "token_acceptance_pooled": tot("accepted") / max(tot("accepted") + tot("rejected"), 1),
                "tokens_per_pass_pooled": tot("new_tokens") / max(tot("target_passes"), 1),
                "tokens_per_pass_mean": tot("tokens_per_pass") / n,
                "tokens_per_second": tot("new_tokens") / max(tot("seconds"), 1e-9),
                "ms_per_pass": tot("seconds") / max(tot("target_passes"), 1) * 1e3,
                "mean_drafted_per_pass": tot("drafted") / max(tot("target_passes"), 1),
                "draft_ms_per_token": tot("draft_ms_per_token") / n,
                "draft_ms_per_tree_forward": tot("draft_ms_per_tree_forward") / n}

    # bf16 runs under the demo's budget; the float32 (exactness) runs need twice the bytes
    ram = {"bfloat16": DEMO_RAM, "float32": "2GB"}

    def plain(dtype):
        return load(store, draft=None, ram=ram[dtype], dtype=dtype, max_context=DEMO_MAX_CONTEXT)

    def spec(mode):
        # no target: the demo pair (its store, packed in bf16, is the one `plain` streams)
        return lambda dtype: load(draft=args.out, ram=ram[dtype], dtype=dtype, speculation=mode,
                                  progress=False)

    def same(a: dict, b: dict) -> tuple[int, list[str]]:
        bad = [x["prompt"] for x, y in zip(a["rows"], b["rows"]) if x["ids"] != y["ids"]]
        return len(a["rows"]) - len(bad), bad

    base = run(plain, "plain", "bfloat16", prompts)
    summary = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "ram": DEMO_RAM,
               "temperature": 0.0,
               "plain": {"tokens_per_second": round(base["tokens_per_second"], 3),
                         "target_ms_per_pass": round(base["ms_per_pass"], 2)}}
    checks = prompts[:args.check]
    base32 = run(plain, "plain", "float32", checks) if checks else None
    for mode in modes:
        r = run(spec(mode), mode, "bfloat16", prompts)
        eq, bad = same(r, base)
        for x, y in zip(r["rows"], base["rows"]):
            if x["prompt"] in bad:
                print(f"bf16 difference on {x['prompt']!r}:\n  {mode}: {x['text']!r}\n  plain: {y['text']!r}",
                      flush=True)
        entry = {k: round(v, 4) for k, v in r.items() if k != "rows"}
        entry["speedup_vs_plain"] = round(r["tokens_per_second"] / base["tokens_per_second"], 3)
        if mode == "chain":
            entry["draft_token_over_target_pass"] = round(r["draft_ms_per_token"] / base["ms_per_pass"], 4)
        else:
            entry.pop("draft_ms_per_token")
        entry["bf16_ids_equal_to_plain"] = f"{eq}/{len(prompts)}"
        if checks:
            r32 = run(spec(mode), mode, "float32", checks)
            eq32, bad32 = same(r32, base32)
            entry["float32_ids_equal_to_plain"] = f"{eq32}/{len(checks)}"
            for p in bad32:
                print(f"MISMATCH (float32, must not happen) on {p!r}", flush=True)
        summary[mode] = entry
    print(json.dumps(summary, indent=2), flush=True)
    if args.record:
        side = Path(args.out) / "specdec_draft.json"
        meta = json.loads(side.read_text())
        meta["runtime_eval"] = summary
        write_json_atomic(side, meta)
