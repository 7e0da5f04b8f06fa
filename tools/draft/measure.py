"""How well a draft predicts the demo target, on prompt sets nobody tuned for.

  python -m tools.draft.measure                       # the shipped draft, every set, both parts
  python -m tools.draft.measure --sets open --skip-runtime
  python -m tools.draft.measure --draft skip:0,2,4,...  # a layer-skipped copy of the target

Two parts, neither depends on the machine's load:
* Teacher forced: the target (transformers, float32) answers each prompt greedily, alone (no
  padding); the draft then sees the target's own prefix at every reply position. Reported: the
  agreement at the first drafted position (the draft's argmax = the target's greedy token) and,
  at depth d = 2..5, the agreement given the d-1 drafts before it were right (a right draft
  leaves the draft's context equal to the target's, so this is what a chain meets), and what a
  fixed chain of k would verify per pass (1 + the sum over depths of the chance that all
  drafts so far are right).
* Runtime (the shipped draft only): specdec's demo pair as `specdec chat` loads it, chain and a
  16-node tree, temperature 0 with no repetition penalty, its own GenerationStats: token
  acceptance (accepted / offered), tokens per target pass, acceptance by drafted position.

Sets: `open` and `hidden` (tools/draft/eval_prompts_independent.toml, written by hand and held
out), `demo` (the demo draft's 20 evaluation prompts), `generator` (prompts from the first
recipe's templates with a seed its data did not use: generator-style, though one may equal a
training prompt by chance)."""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

import torch

from specdec.demo import DEMO_DRAFT_DIR

from .drafters import make_drafter
from .files import eval_prompts, write_json_atomic
from .held_out import independent_prompts
from .target import chat_ids, load_target
from .template_prompts import template_prompt

DEPTHS = 5
GENERATOR_SEED = 987_654  # not a seed the first recipe's data used (0)


def prompt_sets(names: list[str], n_generator: int = 40) -> dict[str, list[str]]:
    out = {}
    for name in names:
        if name in ("open", "hidden"):
            out[name] = independent_prompts(name)
        elif name == "demo":
            out[name] = eval_prompts()
        elif name == "generator":
            rng = random.Random(GENERATOR_SEED)
            out[name] = [template_prompt(rng).strip() for _ in range(n_generator)]
        else:
            raise SystemExit(f"unknown set {name!r}: use open, hidden, demo, generator")
    return out


@torch.no_grad()
def greedy_reply(model, prompt_ids: list[int], n: int, end: int) -> list[int]:
    inp = torch.tensor([prompt_ids])
    out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=n,
                         do_sample=False, eos_token_id=end, pad_token_id=end)
    return out[0, len(prompt_ids):].tolist()


def depth_rates(matches: list[list[bool]], depths: int = DEPTHS) -> dict:
    """matches[r][t]: the draft's argmax at reply position t equals the target's token.
    From every start t, drafts at t, t+1, ... until one is wrong: the rate at depth d is
    P(draft d right | drafts 1..d-1 right), counted where position t+d-1 exists."""
    tried, hit = [0] * depths, [0] * depths
    for m in matches:
        for t in range(len(m)):
            for d in range(min(depths, len(m) - t)):
                tried[d] += 1
                if not m[t + d]:
                    break
                hit[d] += 1
    rates = [h / n if n else 0.0 for h, n in zip(hit, tried)]
    chain, all_right = [], 1.0
    for r in rates:
        all_right *= r
        chain.append((chain[-1] if chain else 1.0) + all_right)
    return {"positions": tried[0], "first": rates[0], "conditional": rates[1:],
            "chain_tokens_per_pass": chain}


CONFIDENCE_EDGES = (0.3, 0.5, 0.7, 0.9)


def confidence_rates(matches: list[list[bool]], target_p1: list[list[float]],
                     edges=CONFIDENCE_EDGES) -> list[dict]:
    """First-position agreement by how sure the target is of its own token (its top-1
    probability there), in the buckets [0, e1), [e1, e2), ..., [e_last, 1]: where a draft
    loses, on the target's near-ties or on what the target knows."""
    bounds = [0.0, *edges, float("inf")]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        hits = [m for ms, ps in zip(matches, target_p1) for m, q in zip(ms, ps) if lo <= q < hi]
        out.append({"target_p1_from": lo, "target_p1_to": min(hi, 1.0), "positions": len(hits),
                    "first": sum(hits) / len(hits) if hits else None})
    return out


class ReplyCache:
    """The target's greedy replies by prompt and length, kept in a JSON file (they are the
    slow part, and the same for every draft measured)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data = json.loads(path.read_text()) if path and path.exists() else {}

    def get(self, model, ids: list[int], n: int, end: int) -> list[int]:
        key = hashlib.sha256(json.dumps([ids, n]).encode()).hexdigest()
        if key not in self.data:
            self.data[key] = greedy_reply(model, ids, n, end)
            if self.path:  # results/ is not in a fresh checkout (it is ignored)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.path, self.data)
        return self.data[key]


def teacher_forced(drafter, model, tok, prompts: list[str], n: int, cache: ReplyCache) -> dict:
    end = tok.convert_tokens_to_ids("<|im_end|>")
    matches, target_p1 = [], []
    for p in prompts:
        ids = chat_ids(tok, p)
        reply = cache.get(model, ids, n, end)
        at = slice(len(ids) - 1, len(ids) - 1 + len(reply))
        guesses = drafter.argmax(ids + reply)[at]
        matches.append([int(g) == r for g, r in zip(guesses.tolist(), reply)])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + reply])).logits[0, at].float()
        target_p1.append(torch.softmax(logits, -1).max(-1).values.tolist())
    return {**depth_rates(matches), "by_target_confidence": confidence_rates(matches, target_p1)}


def runtime(prompts: list[str], mode: str, n: int) -> dict:
    import specdec

    kw = {"tree_nodes": 16} if mode == "tree" else {}
    lm = specdec.load(speculation=mode, progress=False, **kw)
    tot = dict(accepted=0, rejected=0, new_tokens=0, target_passes=0, drafted=0)
    offered, taken = [0] * DEPTHS, [0] * DEPTHS
    try:
        for p in prompts:
            lm.reset()
            s = lm.chat([{"role": "user", "content": p}], max_new_tokens=n, temperature=0.0,
                        repetition_penalty=1.0).stats
            for k in tot:
                tot[k] += getattr(s, k)
            for i in range(min(DEPTHS, len(s.position_offered))):
                offered[i] += s.position_offered[i]
                taken[i] += s.position_taken[i]
    finally:
        lm.close()
    return {**tot, "token_acceptance": tot["accepted"] / max(tot["accepted"] + tot["rejected"], 1),
            "tokens_per_pass": tot["new_tokens"] / max(tot["target_passes"], 1),
            "position_acceptance": [t / o if o else None for t, o in zip(taken, offered)]}


def fmt_tf(r: dict) -> str:
    cond = " / ".join(f"{x:.2f}" for x in r["conditional"])
    chain = " / ".join(f"{x:.2f}" for x in r["chain_tokens_per_pass"][3:5])
    by = ", ".join(f"{b['target_p1_from']:.1f}+ {b['first']:.3f} ({b['positions']})"
                   for b in r.get("by_target_confidence", []) if b["positions"])
    return (f"first {r['first']:.3f}; depth 2..5 {cond}; chain of 4 / 5 would verify {chain} "
            f"tokens per pass ({r['positions']} positions)"
            + (f"\n    first by the target's top-1 probability: {by}" if by else ""))


def fmt_rt(r: dict) -> str:
    pos = " ".join("-" if x is None else f"{x:.2f}" for x in r["position_acceptance"])
    return (f"token acceptance {r['token_acceptance']:.3f}, {r['tokens_per_pass']:.2f} tokens per pass "
            f"({r['new_tokens']} tokens, {r['target_passes']} passes); by position {pos}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="open,hidden,demo,generator")
    ap.add_argument("--draft", default="demo", help="demo (the shipped draft, or DIR: a draft "
                    "trained by tools.draft), skip:I,J,... (the target's layers I,J,... only), "
                    "rtn:BITS[:GROUP] (the target with every linear weight rounded to BITS bits)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts of each set")
    ap.add_argument("--skip-runtime", action="store_true")
    ap.add_argument("--runtime-sets", default="open,hidden",
                    help="the sets the runtime part runs on (it is the slow part)")
    ap.add_argument("--modes", default="chain,tree")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the figures here as JSON")
    ap.add_argument("--reply-cache", default="results/target_greedy_replies.json",
                    help="the target's replies, reused across runs ('' for none)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = {k: v[:args.limit] if args.limit else v for k, v in prompt_sets(args.sets.split(",")).items()}
    _, tok, model = load_target(torch.float32)
    drafter = make_drafter(args.draft, model, DEMO_DRAFT_DIR)
    cache = ReplyCache(Path(args.reply_cache) if args.reply_cache else None)
    report = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "draft": args.draft,
              "max_new_tokens": args.max_new_tokens, "sets": {}}
    for name, prompts in sets.items():
        r = teacher_forced(drafter, model, tok, prompts, args.max_new_tokens, cache)
        report["sets"][name] = {"prompts": len(prompts), "teacher_forced": r}
        print(f"[{name}, {len(prompts)} prompts] teacher forced: {fmt_tf(r)}", flush=True)
        save(args.out, report)  # each figure as it comes: a long run stopped keeps what it has
    if not args.skip_runtime and args.draft == "demo":
        for name, prompts in ((k, v) for k, v in sets.items() if k in args.runtime_sets.split(",")):
            for mode in args.modes.split(","):
                r = runtime(prompts, mode, args.max_new_tokens)
                report["sets"][name][f"runtime_{mode}"] = r
                print(f"[{name}, {len(prompts)} prompts] runtime {mode}: {fmt_rt(r)}", flush=True)
                save(args.out, report)


def save(out: str | None, report: dict) -> None:
    if out:
        write_json_atomic(Path(out), report)

if __name__ == "__main__":
    main()
