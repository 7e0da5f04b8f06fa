"""Demo chat with its default settings against plain decoding, at the demo budget: tokens per
second of each, their ratio, tokens per pass, drafted tokens and bytes read (the stream's own
count and the process's /proc/self/io), with the CPU's ISA.

The contenders run interleaved in one process (plain, default, plain, default, ... over the
same prompts), and each contender's best round counts, so a load that drifts during the run
weighs on both alike. Every contender is the demo pair's target under the demo's RAM budget,
sampled with the demo preset (greedy, light repetition penalty) through lm.chat:

    plain    no draft (the whole target fits the budget: nothing is read per pass)
    default  specdec.load() with no arguments: exactly what `specdec chat` runs
    lookup   prompt lookup
    MODE[K][-FORM]   the demo draft in MODE (chain, tree or overlap), as `specdec chat
             --speculation MODE` loads it; K: a fixed chain length (chain2: two drafts per
             pass; none: adaptive); FORM: the draft's form instead of the demo's choice,
             bf16 (the shipped weights), q4 or q8 (its low-bit copy, `--draft-quant`,
             specdec/quantized_draft.py)

    python -m tools.demo_speed                        # plain vs default, 20 prompts x 48 tokens, best of 3
    python -m tools.demo_speed --contenders plain,default,chain --rounds 2 --prompts 4
    python -m tools.demo_speed --contenders plain,chain,chain-q4,chain2-q4 --rounds 1
    python -m tools.demo_speed --prompt-file tools/speculation_prompts.txt
"""
from __future__ import annotations

import argparse
import json
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

import specdec
from specdec.compute.probe import machine
from specdec.demo import DEMO_DRAFT_DIR, DEMO_MAX_CONTEXT, DEMO_RAM, demo_draft
from specdec.demo_model import ensure_demo_gguf
from specdec.sampling_params import preset
from specdec.session import packed_store

DEMO_PROMPTS = Path(specdec.__file__).parent / "configs" / "demo_prompts.toml"


def contender_settings(name: str, store: Path) -> dict:
    """load() keywords for a contender (the demo default: none at all)."""
    if name == "default":
        return {}
    common = dict(target=store, ram=DEMO_RAM, max_context=DEMO_MAX_CONTEXT)
    if name == "plain":
        return common
    if name == "lookup":
        return {**common, "draft": "lookup"}
    m = DRAFTED.match(name)
    if m is None:
        raise ValueError(f"unknown contender {name!r}: use plain, default, lookup, or MODE[K][-FORM] "
                         "(MODE chain, tree or overlap; K a fixed chain length; FORM bf16, q4 or q8)")
    mode, k, form = m.groups()
    if k and mode != "chain":
        raise ValueError(f"contender {name!r}: a fixed length K applies to chain only")
    return {**common, **draft_form(form), "speculation": mode, **({"k": int(k)} if k else {})}


DRAFTED = re.compile(r"^(chain|tree|overlap)(\d*)(?:-(bf16|q4|q8))?$")


def draft_form(form: str | None) -> dict:
    """load() keywords for the demo draft as `specdec chat --speculation ...` brings it (no
    form), the shipped bf16 weights, or its low-bit copy (`--draft-quant`)."""
    if form is None:
        return {"draft": demo_draft(None, draft_model=True)}
    return {"draft": DEMO_DRAFT_DIR, **({} if form == "bf16" else {"draft_quant": form})}


@dataclass
class Tally:
    """One contender's counts over one round of prompts."""
    tokens: int = 0
    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    stream_bytes: int = 0
    io_bytes: int = 0
    seconds: float = 0.0
    replies: list = field(default_factory=list)

    def add(self, out, seconds: float, io_bytes: int) -> None:
        s = out.stats
        self.tokens += s.new_tokens
        self.passes += s.target_passes
        self.drafted += s.drafted
        self.accepted += s.accepted
        self.stream_bytes += s.bytes_read
        self.io_bytes += io_bytes
        self.seconds += seconds
        self.replies.append(out.token_ids)

    def row(self) -> dict:
        return {"tokens_per_s": round(self.tokens / self.seconds, 2), "tokens": self.tokens,
                "passes": self.passes, "tokens_per_pass": round(self.tokens / max(self.passes, 1), 3),
                "drafted": self.drafted, "accepted": self.accepted,
                "stream_MB_per_pass": round(self.stream_bytes / max(self.passes, 1) / 1e6, 2),
                "proc_io_read_MB": round(self.io_bytes / 1e6, 2), "seconds": round(self.seconds, 2)}


def proc_read_bytes() -> int:
    """Bytes this process made the storage layer fetch (/proc/self/io read_bytes)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def run_round(lm, prompts: list[str], tokens: int) -> Tally:
    tally = Tally()
    sampling = preset("demo")
    for prompt in prompts:
        lm.reset()
        io_before, started = proc_read_bytes(), time.perf_counter()
        out = lm.chat([{"role": "user", "content": prompt}], max_new_tokens=tokens, sampling=sampling)
        tally.add(out, time.perf_counter() - started, proc_read_bytes() - io_before)
    return tally


def read_prompts(args) -> list[str]:
    if args.prompt_file:
        lines = Path(args.prompt_file).read_text(encoding="utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip()]
    else:
        prompts = tomllib.loads(DEMO_PROMPTS.read_text(encoding="utf-8"))["prompts"]
    return prompts[:args.prompts] if args.prompts else prompts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contenders", default="plain,default", help="comma list (first: the baseline)")
    p.add_argument("--prompts", type=int, default=0, help="first N prompts (0: all)")
    p.add_argument("--prompt-file", help="prompts, one a line (default: the 20 demo prompts)")
    p.add_argument("--tokens", type=int, default=48, help="new tokens per reply")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best counts")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.contenders.split(",")
    prompts = read_prompts(args)
    store = packed_store(ensure_demo_gguf(None), "bfloat16", None, True)
    decoders = {n: specdec.load(progress=False, **contender_settings(n, store)) for n in names}
    m = machine()
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": m["cpu"],
                      "isa": m["isa"], "bf16_instructions": m["bf16_instructions"],
                      "threads": args.threads, "prompts": len(prompts), "tokens": args.tokens,
                      "rounds": args.rounds}))
    for n, lm in decoders.items():
        print(f"{n}: {lm.engine.strategy.describe()}; {lm.plan.summary if lm.plan else 'in RAM'}")
    best: dict[str, Tally] = {}
    for r in range(args.rounds):
        for n, lm in decoders.items():
            t = run_round(lm, prompts, args.tokens)
            print(json.dumps({"round": r, "contender": n, **t.row()}), flush=True)
            if n not in best or t.seconds < best[n].seconds:
                best[n] = t
    report(names, best)


def rate(t: Tally) -> float:
    return t.tokens / t.seconds


def report(names: list[str], best: dict[str, Tally]) -> None:
    base = best[names[0]]
    print(f"\nbest of each (baseline {names[0]}):")
    for n in names:
        t = best[n]
        same = sum(a == b for a, b in zip(t.replies, base.replies))
        print(json.dumps({"contender": n, **t.row(),
                          "speed_vs_" + names[0]: round(rate(t) / rate(base), 3),
                          "replies_equal_to_" + names[0]: f"{same}/{len(t.replies)}"}))


if __name__ == "__main__":
    main()
