"""Teacher-forced traces of the demo pair, and greedy chain policies replayed on the target's
replies without running the target.

`record`: the target's greedy reply to each prompt (specdec float32, or taken from a
tools.draft.measure reply cache), and the draft reading the target's own prefix at every
reply position: whether its argmax is the target's token, and its probability of it (its
confidence). Written as JSON; `replay` prints the per-depth and per-confidence rates.

`replay`: the chain strategy (speculate/chain.py) with a fresh DraftLengthPolicy and the real
draft, greedy; the target's part of each pass is read from the reply (it takes the drafts
equal to the reply's next tokens and adds the next reply token), so the counts are the
runtime's without a target pass. Costs are modeled: a pass over n tokens costs A + B*n, a
draft token D (the unit is one pass), so sizes depend on acceptance alone, whatever the load.

    python -m tools.speculation_trace record --prompts tools/speculation_prompts.txt --out t.json
    python -m tools.speculation_trace replay t.json --draft 0.05,0.15 --fixed 2,3
    python -m tools.speculation_trace replay --prompts P.txt --replies results/target_greedy_replies.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from pathlib import Path

import torch

from specdec.speculate.chain_policy import DraftLengthPolicy
from tools.draft.measure import depth_rates as measured_depth_rates


def record(lm, prompts: list[str], max_new_tokens: int, replies: dict | None = None) -> list[dict]:
    """`lm`: the demo pair in float32, chain mode. `replies`: a tools.draft.measure reply cache
    (the target's greedy replies under transformers, keyed by prompt ids and length); prompts
    it lacks are answered here."""
    drafter = lm.engine.strategy.drafter
    rows = []
    for prompt in prompts:
        lm.reset()
        messages = [{"role": "user", "content": prompt}]
        ids = lm.encode_chat(messages)
        key = hashlib.sha256(json.dumps([ids, max_new_tokens]).encode()).hexdigest()
        reply = (replies or {}).get(key)
        if reply is None:
            reply = lm.chat(messages, max_new_tokens=max_new_tokens, temperature=0.0).token_ids
        drafter.keep(0)
        with torch.no_grad():
            logits = drafter.forward(torch.tensor(ids + reply[:-1]), num_logits=len(reply))
        probs = torch.softmax(torch.stack([drafter.align(row) for row in logits]).float(), -1)
        top = probs.max(-1)
        rows.append({"prompt": prompt, "reply": reply,
                     "hit": [int(t) == r for t, r in zip(top.indices.tolist(), reply)],
                     "confidence": [round(p, 5) for p in top.values.tolist()]})
    return rows


def replay(lm, trace: list[dict], policy: DraftLengthPolicy, pass_cost: tuple[float, float],
           draft_cost: float) -> dict:
    """The chain strategy with `policy` and the real draft on the recorded replies, greedy: the
    target's part of each pass is read from the reply (the drafts it takes are those equal to
    the reply's next tokens), so no target pass runs and the counts are the runtime's (one
    policy for all prompts, no update on a prompt's first pass, as in the runtime)."""
    from specdec.sampling import SamplingParams
    from specdec.speculate.chain import Chain

    a, b = pass_cost
    chain = Chain(lm.engine.strategy.drafter, policy)
    greedy = SamplingParams(temperature=0.0)
    totals = dict(tokens=0, passes=0, drafted=0, seconds=0.0)
    sizes, tried, taken = Counter(), Counter(), Counter()
    for row in trace:
        context, reply, t = lm.encode_chat([{"role": "user", "content": row["prompt"]}]), row["reply"], 0
        chain.drafter.keep(0)
        while t < len(reply):
            limit = min(policy.k_max if policy.fixed is None else policy.fixed, len(reply) - t - 1)
            drafts, confidences = [], []
            if policy.k > 0 and limit > 0:
                drafted, _, confidences = chain.propose(context, limit, greedy, None)
                drafts = drafted.tolist()
            n = next((i for i, d in enumerate(drafts) if d != reply[t + i]), len(drafts))
            k, seconds = len(drafts), a + b * (len(drafts) + 1)
            if t > 0:  # the runtime does not time a prefill pass
                policy.update(k, n, seconds, draft_cost, tokens=k + 1, confidences=confidences)
            new = reply[t:t + n + 1]
            context += new
            t += len(new)
            chain.drafter.keep(len(context) - 1)
            totals["tokens"] += len(new)
            totals["passes"] += 1
            totals["drafted"] += k
            totals["seconds"] += seconds + k * draft_cost
            if k:
                sizes[k] += 1
            for i in range(min(n + 1, k)):
                tried[i + 1] += 1
                taken[i + 1] += i < n
    passes = totals["passes"]
    return {"tokens_per_pass": round(totals["tokens"] / passes, 3),
            "drafted_per_pass": round(totals["drafted"] / passes, 3),
            "token_acceptance": round(sum(taken.values()) / max(totals["drafted"], 1), 3),
            "modeled_tokens_per_second": round(totals["tokens"] / totals["seconds"], 4),
            "tokens": totals["tokens"], "passes": passes, "drafted": totals["drafted"],
            "sizes": dict(sorted(sizes.items())),
            "position_acceptance": [round(taken[d] / tried[d], 3) for d in sorted(tried)]}


def replay_recorded(trace: list[dict], policy: DraftLengthPolicy, pass_cost: tuple[float, float],
                    draft_cost: float) -> dict:
    """As `replay`, without the model: drafts 1, 2, ... at a reply position are the draft's
    recorded argmaxes at the following positions, with its recorded probabilities. Accepted
    tokens are exact; after a wrong draft the trace holds the draft's probabilities on the
    target's prefix, not on its own wrong token, so the drafts offered after a miss are
    approximate."""
    a, b = pass_cost
    tokens = passes = drafted = 0
    seconds = 0.0
    for row in trace:
        hits, confs, n, t = row["hit"], row["confidence"], len(row["hit"]), 0
        while t < n:
            limit = min(policy.k_max if policy.fixed is None else policy.fixed, n - t - 1)
            offered, miss = [], None
            while policy.k > 0 and limit > 0:
                offered.append(confs[t + len(offered)])
                if miss is None and not hits[t + len(offered) - 1]:
                    miss = len(offered) - 1
                if not policy.keep_drafting(offered, limit):
                    break
            k = len(offered)
            accepted = k if miss is None else miss
            pass_seconds = a + b * (k + 1)
            if t > 0:  # the runtime does not time a prefill pass
                policy.update(k, accepted, pass_seconds, draft_cost, tokens=k + 1, confidences=offered)
            t += accepted + 1
            tokens, passes, drafted = tokens + accepted + 1, passes + 1, drafted + k
            seconds += pass_seconds + k * draft_cost
    return {"tokens_per_pass": round(tokens / passes, 3), "drafted_per_pass": round(drafted / passes, 3),
            "modeled_tokens_per_second": round(tokens / seconds, 4), "tokens": tokens,
            "passes": passes, "drafted": drafted}


def depth_rates(trace: list[dict], depths: int = 6) -> list[float]:
    """Teacher forced: P(draft d right | drafts 1..d-1 right), from every reply position."""
    rates = measured_depth_rates([row["hit"] for row in trace], depths)
    return [round(r, 3) for r in [rates["first"], *rates["conditional"]]]


def calibration(trace: list[dict], edges=(0.3, 0.5, 0.7, 0.85, 0.95)) -> list[tuple]:
    """Teacher forced: (draft probability bin's lower edge, positions, share right)."""
    bins = [[0, 0] for _ in range(len(edges) + 1)]
    for row in trace:
        for hit, conf in zip(row["hit"], row["confidence"]):
            b = sum(conf >= e for e in edges)
            bins[b][0] += 1
            bins[b][1] += hit
    lows = (0.0,) + tuple(edges)
    return [(low, n, round(h / max(n, 1), 3)) for low, (n, h) in zip(lows, bins)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.speculation_trace", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="teacher-forced trace of the demo pair")
    rec.add_argument("--prompts", type=Path, required=True, help="one prompt a line")
    rec.add_argument("--max-new-tokens", type=int, default=64)
    rec.add_argument("--ram", default="2GB")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--replies", type=Path, help="a tools.draft.measure reply cache to take replies from")
    rep = sub.add_parser("replay", help="replay greedy chain policies on a trace")
    rep.add_argument("trace", type=Path, nargs="?", help="a recorded trace (or --prompts)")
    rep.add_argument("--prompts", type=Path, help="record the trace first, from these prompts")
    rep.add_argument("--replies", type=Path, help="with --prompts: a tools.draft.measure reply cache")
    rep.add_argument("--max-new-tokens", type=int, default=64)
    rep.add_argument("--pass", dest="pass_cost", default="1.0,0.002",
                     type=lambda s: tuple(float(x) for x in s.split(",")))
    rep.add_argument("--draft", default="0.05,0.15", help="draft token costs, in passes (comma list)")
    rep.add_argument("--fixed", default="", help="also replay these fixed chain lengths (1,2,4)")
    rep.add_argument("--ram", default="2GB")
    rep.add_argument("--recorded", action="store_true",
                     help="replay on the trace's recorded draft probabilities (no model; approximate after a miss)")
    args = ap.parse_args(argv)
    import specdec

    if args.command == "record" or getattr(args, "trace", None) is None:
        if args.prompts is None:
            ap.error("give a trace file or --prompts")
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
        if not prompts:
            ap.error(f"{args.prompts} holds no prompts (one a line)")
    if args.command == "replay" and args.recorded:
        return _replay_recorded(args)
    lm = specdec.load(speculation="chain", dtype="float32", ram=args.ram)
    if args.command == "record" or getattr(args, "trace", None) is None:
        replies = json.loads(args.replies.read_text()) if args.replies else None
        trace = record(lm, prompts, args.max_new_tokens, replies)
        if args.command == "record":
            from offload.atomic import write_atomic
            write_atomic(args.out, json.dumps(trace))
            lm.close()
            return 0
    else:
        trace = json.loads(args.trace.read_text())
    report(trace, args, lambda policy, cost: replay(lm, trace, policy, args.pass_cost, cost))
    lm.close()
    return 0


def report(trace: list[dict], args, run) -> None:
    """The teacher-forced rates, then run(policy, draft cost) for the adaptive policy and each
    fixed length, at each draft cost."""
    print("teacher forced, P(draft d right | 1..d-1 right):", depth_rates(trace))
    print("teacher forced, (draft probability from, positions, share right):", calibration(trace))
    for cost in (float(c) for c in args.draft.split(",")):
        policies = {"adaptive": DraftLengthPolicy}
        policies.update({f"k={k}": (lambda k=int(k): DraftLengthPolicy(k=k))
                         for k in filter(None, args.fixed.split(","))})
        for name, make in policies.items():
            print(f"draft {cost}", name, json.dumps(run(make(), cost)), flush=True)


def _replay_recorded(args) -> int:
    if args.trace is None:
        raise SystemExit("--recorded needs a recorded trace file")
    trace = json.loads(args.trace.read_text())
    report(trace, args, lambda policy, cost: replay_recorded(trace, policy, args.pass_cost, cost))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
