"""The demo draft in each form it can run in (bf16, float32, and its q8 / q4 copies,
specdec/quantized_draft.py) beside the demo target pinned whole: what each costs and how often
it agrees with the target.

    python -m tools.draft_forms costs                # per-call seconds, as ratios to a target pass
    python -m tools.draft_forms agreement            # teacher-forced agreement on the open set

costs: one process, the calls interleaved (every round: a target pass over 1, 2, ..., 8 new
tokens, then one drafted token of every form, each after the same 100-token context), so a
load that drifts weighs on all alike; reported: the median and the least seconds of each call
and both as ratios to the one-token target pass. On a shared machine only the ratios mean
anything.

agreement: the runtime's own draft models (the kernels they decode with) fed the target's
greedy replies (transformers, float32, cached in --reply-cache) to prompts written
independently of the draft's training data (tools/draft/eval_prompts_independent.toml):
agreement at the first drafted position, at depth 2..5 given the drafts before were right, and
what a chain of k would verify per pass (tools.draft.measure's figures, for each form).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import specdec
from specdec.compute.probe import machine
from specdec.demo import DEMO_DRAFT_DIR, DEMO_MAX_CONTEXT, DEMO_RAM
from specdec.demo_model import ensure_demo_gguf
from specdec.drafts import ModelDraft
from specdec.quantized_draft import QuantizedDraft
from specdec.session import packed_store

FORMS = ("bf16", "float32", "q8", "q4")
CONTEXT = 100
PASS_TOKENS = (1, 2, 3, 4, 5, 6, 8)


def pinned_target(threads: int):
    """The demo target alone under the demo budget: every layer pinned, nothing read per pass."""
    torch.set_num_threads(threads)
    store = packed_store(ensure_demo_gguf(None), "bfloat16", None, True)
    lm = specdec.load(target=store, ram=DEMO_RAM, max_context=DEMO_MAX_CONTEXT, progress=False)
    if lm.plan.streamed:
        raise SystemExit(f"the demo target is not pinned whole: {lm.plan.summary}")
    return lm


def draft_model(form: str, target):
    """The draft's model in `form`, as the runtime builds it beside `target`."""
    if form in ("bf16", "float32"):
        dtype = torch.bfloat16 if form == "bf16" else torch.float32
        return ModelDraft(DEMO_DRAFT_DIR).opened().resident_model(target, dtype).model
    return QuantizedDraft(DEMO_DRAFT_DIR, form, progress=False).resident_model(target, torch.bfloat16).model


def timed_call(model, cache, tokens: torch.Tensor) -> float:
    started = time.perf_counter()
    model.forward(tokens, cache.next_positions(tokens.numel()), cache, num_logits=tokens.numel())
    seconds = time.perf_counter() - started
    cache.crop(CONTEXT)
    return seconds


def costs(args) -> dict:
    lm = pinned_target(args.threads)
    models = {"target": lm.target.model, **{f: draft_model(f, lm.target) for f in args.forms.split(",")}}
    ids = torch.randint(100, 20000, (CONTEXT + max(PASS_TOKENS),), generator=torch.Generator().manual_seed(0))
    caches = {}
    for name, model in models.items():
        caches[name] = model.new_cache(CONTEXT + 16)
        model.forward(ids[:CONTEXT], caches[name].next_positions(CONTEXT), caches[name], num_logits=1)
    calls = [(f"target pass, {n} tokens", "target", n) for n in PASS_TOKENS]
    calls += [(f"draft token, {f}", f, 1) for f in models if f != "target"]
    seconds: dict[str, list[float]] = {label: [] for label, _, _ in calls}
    for _ in range(args.rounds):
        for label, name, n in calls:
            seconds[label].append(timed_call(models[name], caches[name], ids[CONTEXT:CONTEXT + n]))
    base = seconds[calls[0][0]]
    rows = {label: {"median_ms": round(statistics.median(s) * 1e3, 2), "least_ms": round(min(s) * 1e3, 2),
                    "ratio_median": round(statistics.median(s) / statistics.median(base), 3),
                    "ratio_least": round(min(s) / min(base), 3)} for label, s in seconds.items()}
    return {"threads": args.threads, "rounds": args.rounds, "context": CONTEXT, "calls": rows}


def agreement(args) -> dict:
    from tools.draft.measure import ReplyCache, prompt_sets, teacher_forced
    from tools.draft.target import load_target

    lm = pinned_target(args.threads)
    _, tok, reference = load_target(torch.float32)
    cache = ReplyCache(Path(args.reply_cache) if args.reply_cache else None)
    sets = prompt_sets(args.sets.split(","))
    out = {}
    for form in args.forms.split(","):
        drafter = RuntimeDrafter(draft_model(form, lm.target))
        out[form] = {name: teacher_forced(drafter, reference, tok, prompts[:args.limit or None],
                                          args.max_new_tokens, cache)
                     for name, prompts in sets.items()}
        print(json.dumps({"form": form, **out[form]}), flush=True)
    return {"max_new_tokens": args.max_new_tokens, "forms": out}


class RuntimeDrafter:
    """A specdec draft model's argmax at every position of a sequence (one forward)."""

    def __init__(self, model):
        self.model = model

    def argmax(self, ids: list[int]) -> torch.Tensor:
        cache = self.model.new_cache(len(ids))
        tokens = torch.tensor(ids, dtype=torch.long)
        return self.model.forward(tokens, cache.next_positions(len(ids)), cache).argmax(-1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("costs", "agreement"))
    p.add_argument("--forms", default=",".join(FORMS), help=f"comma list of {', '.join(FORMS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40, help="costs: interleaved rounds")
    p.add_argument("--sets", default="open", help="agreement: open, hidden, demo, generator")
    p.add_argument("--limit", type=int, default=0, help="agreement: first N prompts of each set")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--reply-cache", default="results/target_greedy_replies.json",
                   help="agreement: the target's replies, reused across runs ('' for none)")
    args = p.parse_args(argv)
    bad = [f for f in args.forms.split(",") if f not in FORMS]
    if bad:
        raise SystemExit(f"--forms: unknown {', '.join(bad)}; use {', '.join(FORMS)}")
    m = machine()
    head = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": m["cpu"],
            "isa": m["isa"], "bf16_instructions": m["bf16_instructions"]}
    print(json.dumps(head), flush=True)
    print(json.dumps(costs(args) if args.what == "costs" else agreement(args), indent=1))


if __name__ == "__main__":
    main()
