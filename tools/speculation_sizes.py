"""How the chain and tree policies size their drafts on the demo pair: tokens per target pass,
token acceptance (accepted / drafted), the chain lengths chosen and the acceptance by drafted
position, greedy, on a file of prompts (one a line, chat turns).

The policies size by measured seconds; on a shared machine those depend on the load, so by
default the seconds are modeled instead (--pass A,B: a target pass over n tokens costs A + B*n;
--draft T: a draft token, or a batched draft tree forward, costs T), which makes the sizes a
function of acceptance alone and runs comparable across machines and loads. --measured uses
the real clock.

    python -m tools.speculation_sizes --prompts tools/speculation_prompts.txt --speculation chain
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import specdec


def modeled(strategy, pass_cost: tuple[float, float], draft_cost: float) -> None:
    """Replace the strategy's measured seconds by the model's (see the module doc)."""
    a, b = pass_cost
    commit = strategy.commit

    def modeled_commit(step, plan, logits, pass_seconds):
        state = plan.state
        if hasattr(state, "draft_seconds"):  # the tree's drafting time, for its gate
            state.draft_seconds = draft_cost * (1 + state.tree.forwarded // 8)
        return commit(step, plan, logits, a + b * plan.tokens.numel())
    strategy.commit = modeled_commit
    if hasattr(strategy, "draft_seconds"):  # the chain: one draft token
        propose = strategy.propose

        def modeled_propose(*args, **kwargs):
            out = propose(*args, **kwargs)
            strategy.draft_seconds.value = draft_cost
            return out
        strategy.propose = modeled_propose
    if hasattr(strategy, "cost"):  # a tree: one batched draft forward
        strategy.cost.observe_draft = lambda seconds, real=strategy.cost.observe_draft: real(draft_cost)


def run(prompts: list[str], max_new_tokens: int, args) -> dict:
    lm = specdec.load(speculation=args.speculation, dtype=args.dtype, ram=args.ram)
    if not args.measured:
        modeled(lm.engine.strategy, args.pass_cost, args.draft)
    sizes, totals, positions, replies = Counter(), Counter(), [], []
    for prompt in prompts:
        lm.reset()
        out = lm.chat([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens,
                      temperature=0.0)
        s = out.stats
        replies.append(out.token_ids)
        sizes.update(s.k_used)
        for key in ("new_tokens", "target_passes", "drafted", "accepted"):
            totals[key] += getattr(s, key)
        positions.append(s.position_acceptance)
    lm.close()
    return {"tokens_per_pass": round(totals["new_tokens"] / totals["target_passes"], 3),
            "token_acceptance": round(totals["accepted"] / max(totals["drafted"], 1), 3),
            "drafted_per_pass": round(totals["drafted"] / totals["target_passes"], 3),
            "sizes": dict(sorted(sizes.items())), "totals": dict(totals),
            "position_acceptance": _mean_rows(positions), "replies": replies}


def _mean_rows(rows: list[list[float]]) -> list[float]:
    width = max((len(r) for r in rows), default=0)
    cols = [[r[i] for r in rows if i < len(r)] for i in range(width)]
    return [round(sum(c) / len(c), 3) for c in cols]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.speculation_sizes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=Path, required=True, help="one prompt a line")
    ap.add_argument("--speculation", default="chain", choices=("chain", "tree"))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--ram", default="2GB", help="RAM budget (float32 needs more than the demo's)")
    ap.add_argument("--pass", dest="pass_cost", default="1.0,0.002",
                    type=lambda s: tuple(float(x) for x in s.split(",")),
                    help="modeled target pass seconds A,B: A + B * tokens (default 1.0,0.002)")
    ap.add_argument("--draft", type=float, default=0.05, help="modeled seconds of a draft forward")
    ap.add_argument("--measured", action="store_true", help="the real clock, not the model")
    ap.add_argument("--out", type=Path, help="write the result (with the replies) as JSON here")
    args = ap.parse_args(argv)
    prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    if not prompts:
        ap.error(f"{args.prompts} holds no prompts (one a line)")
    result = run(prompts, args.max_new_tokens, args)
    if args.out:
        args.out.write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items() if k != "replies"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
