"""Soak test: a long multi-turn conversation with a streamed target and many rollbacks,
watching RAM (RSS), threads and open file descriptors turn by turn.

    python -m specdec.bench.soak                # tiny random pair, target streamed from disk
    python -m specdec.bench.soak --tokens 4000 --turns 40 --json soak.json
    python -m specdec.bench.soak --target T --draft D --ram 2GB   # your own pair (chat template if any)

The tiny pair is built in a temp dir (random llama, a noised copy as draft, packed to a
store and streamed under the smallest RAM budget that works, so every pass reads layers
from disk). Each turn appends the reply and a new user message to the conversation and
generates again, reusing the caches up to the shared prefix, exactly as chat() does;
sampling at temperature > 0 makes the draft miss often, so caches roll back on most passes.
Prints one line per turn and a JSON summary (also written with --json).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path



def process_figures() -> dict:
    import psutil

    p = psutil.Process()
    return {"rss_mb": round(p.memory_info().rss / 2**20, 1), "threads": threading.active_count(),
            "os_threads": p.num_threads(), "fds": p.num_fds()}


def make_tiny_pair(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random llama target (layers ~1.6 MB in float32, so streaming is real) and a noised
    copy as its draft, saved as safetensors under root."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=2048, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      eos_token_id=None, bos_token_id=None)
    target, draft = root / "target", root / "draft"
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(str(target))
    state = load_file(str(target / "model.safetensors"))
    g = torch.Generator().manual_seed(seed + 1)
    # A sharper head makes the target's choices peaked, so a noised draft agrees often enough
    # to be accepted some of the time (and rejected, with a rollback, the rest).
    state["lm_head.weight"] = state["lm_head.weight"] * 30
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    noised = {k: v + torch.randn(v.shape, generator=g) * v.std().clamp_min(1e-3) * 0.3
              for k, v in state.items()}
    draft.mkdir()
    (draft / "config.json").write_text((target / "config.json").read_text())
    save_file(noised, str(draft / "model.safetensors"), metadata={"format": "pt"})
    return target, draft


def streaming_budget(store, draft, **load_kwargs) -> str:
    """The smallest RAM budget load() accepts (it says so in its error)."""
    import specdec
    from offload.budget import BudgetError

    try:
        specdec.load(store, draft=draft, ram="1MB", **load_kwargs)
    except BudgetError as e:
        return re.search(r"Give --ram (\d+MB)", str(e)).group(1)
    raise AssertionError("a 1MB budget was accepted")


def load_tiny_streamed(root: Path, max_context: int = 4096):
    """The tiny pair with its target packed and streamed under the minimum budget."""
    import specdec
    from offload.pack import pack

    target, draft = make_tiny_pair(root)
    store = pack(target, root / "store", dtype="float32", progress=False)
    kwargs = dict(dtype="float32", max_context=max_context)
    ram = streaming_budget(store, draft, **kwargs)
    lm = specdec.load(store, draft=draft, ram=ram, **kwargs)
    return lm, ram


def soak(lm, turns: int, tokens_per_turn: int, temperature: float = 0.8, seed: int = 0,
         user_tokens: int = 12, log=print) -> dict:
    """Run a conversation of `turns` turns (lm.chat when the model has a chat template,
    else token-id turns through generate); return the figures per turn and a summary."""
    import random

    rng = random.Random(seed)
    vocab = lm.target.args.vocab_size
    use_chat = bool(lm.tokenizer is not None and getattr(lm.tokenizer, "chat_template", None))
    conversation: list = [] if use_chat else [rng.randrange(vocab) for _ in range(user_tokens)]
    messages: list[dict] = []
    start = process_figures()
    per_turn, total_tokens, passes, drafted, accepted = [], 0, 0, 0, 0
    started = time.perf_counter()
    for turn in range(turns):
        if use_chat:
            messages.append({"role": "user", "content": f"Tell me something new, part {turn}."})
            out = lm.chat(messages, max_new_tokens=tokens_per_turn, temperature=temperature,
                          seed=seed + turn)
            messages.append({"role": "assistant", "content": out.text})
        else:
            out = lm.generate(conversation, max_new_tokens=tokens_per_turn,
                              temperature=temperature, seed=seed + turn)
            conversation += out.token_ids + [rng.randrange(vocab) for _ in range(user_tokens)]
        s = out.stats
        total_tokens += s.new_tokens
        passes += s.target_passes
        drafted += s.drafted
        accepted += s.accepted
        figures = {"turn": turn + 1, "new_tokens": s.new_tokens, "prefilled": s.prefilled_tokens,
                   "passes": s.target_passes, "rejected": s.drafted - s.accepted,
                   "bytes_read": s.bytes_read, **process_figures()}
        per_turn.append(figures)
        log(json.dumps(figures))
    end = process_figures()
    rss = [t["rss_mb"] for t in per_turn]
    return {
        "turns": turns, "tokens": total_tokens, "target_passes": passes, "drafted": drafted,
        "accepted": accepted, "rejected_drafts": drafted - accepted,
        "context_tokens": len(conversation) if not use_chat else None,
        "seconds": round(time.perf_counter() - started, 2),
        "rss_mb": {"start": start["rss_mb"], "after_turn_1": rss[0], "end": end["rss_mb"],
                   "max": max(rss), "growth_after_turn_1": round(end["rss_mb"] - rss[0], 1)},
        # after turn 1 the prefetch thread (and its read pool) are up for good: the baseline
        "threads": {"start": start["threads"], "after_turn_1": per_turn[0]["threads"],
                    "end": end["threads"], "max": max(t["threads"] for t in per_turn)},
        "os_threads": {"start": start["os_threads"], "after_turn_1": per_turn[0]["os_threads"],
                       "end": end["os_threads"], "max": max(t["os_threads"] for t in per_turn)},
        "fds": {"start": start["fds"], "after_turn_1": per_turn[0]["fds"], "end": end["fds"],
                "max": max(t["fds"] for t in per_turn)},
        "per_turn": per_turn,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2400, help="total new tokens (default 2400)")
    ap.add_argument("--turns", type=int, default=24)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", help="a model dir / store (default: a tiny random pair)")
    ap.add_argument("--draft")
    ap.add_argument("--ram", help="RAM budget for --target")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import specdec

    with tempfile.TemporaryDirectory(prefix="specdec-soak-") as tmp:
        if args.target:
            lm = specdec.load(args.target, draft=args.draft, ram=args.ram)
            ram = args.ram
        else:
            lm, ram = load_tiny_streamed(Path(tmp))
        print(f"# {lm.target.description}; draft {lm.draft.path if lm.draft else None}; "
              f"RAM budget {ram}; plan: {lm.plan.summary if lm.plan else 'in RAM'}", file=sys.stderr)
        summary = soak(lm, args.turns, max(1, args.tokens // args.turns), args.temperature,
                       args.seed, log=lambda line: print(line, file=sys.stderr))
        lm.close()
    summary["command"] = " ".join(["python", "-m", "specdec.bench.soak", *(argv or sys.argv[1:])])
    brief = {k: v for k, v in summary.items() if k != "per_turn"}
    print(json.dumps(brief, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    # the reader may hold one layer file open at the moment of a sample: allow that one
    leaked = (summary["threads"]["end"] > summary["threads"]["after_turn_1"]
              or summary["fds"]["end"] > summary["fds"]["after_turn_1"] + 1)
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
