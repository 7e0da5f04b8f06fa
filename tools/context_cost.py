"""What a pass of the demo target costs as its context grows: the target pinned whole under
the demo budget, as the demo runs it (bf16), one KV cache filled to each context, then passes
of 1 and 4 new tokens timed round by round, every (context, tokens) call once per round, so a
load that drifts weighs on all alike. Reported: the median and least milliseconds of each.

    python -m tools.context_cost                          # contexts 256, 1000, 2000; 2 threads
    python -m tools.context_cost --contexts 100,1500 --tokens 1,2,8 --threads 1
    PYTHONPATH=../other-checkout python tools/context_cost.py   # another checkout's specdec
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from specdec.compute.probe import machine
from tools.draft_forms import pinned_target


def timed_pass(model, cache, context: int, tokens: torch.Tensor) -> float:
    started = time.perf_counter()
    model.forward(tokens, cache.next_positions(tokens.numel()), cache, num_logits=tokens.numel())
    seconds = time.perf_counter() - started
    cache.crop(context)  # the next round sees the same context
    return seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="256,1000,2000", help="cached tokens before each pass")
    p.add_argument("--tokens", default="1,4", help="new tokens per pass")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    counts = [int(n) for n in args.tokens.split(",")]
    model = pinned_target(args.threads).target.model
    ids = torch.randint(100, 20000, (max(contexts) + max(counts),), generator=torch.Generator().manual_seed(0))
    caches = {}
    for c in contexts:
        caches[c] = model.new_cache(c + max(counts))
        model.forward(ids[:c], caches[c].next_positions(c), caches[c], num_logits=1)
    seconds = {(c, n): [] for c in contexts for n in counts}
    for _ in range(args.rounds):
        for c, n in seconds:
            seconds[(c, n)].append(timed_pass(model, caches[c], c, ids[c:c + n]))
    m = machine()
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "isa": m["isa"],
                      "cpu": m["cpu"], "threads": args.threads, "rounds": args.rounds}))
    for (c, n), s in seconds.items():
        print(json.dumps({"context": c, "tokens": n, "median_ms": round(statistics.median(s) * 1e3, 2),
                          "least_ms": round(min(s) * 1e3, 2)}))


if __name__ == "__main__":
    main()
