"""The command line: `python -m tools.draft gen|train|eval` (also scripts/train_demo_draft.py)."""
from __future__ import annotations

import argparse

import torch

from specdec.demo import DEMO_DRAFT_DIR

from . import __doc__ as RECIPE
from .files import DATA_DIR
from .greedy_gen import cmd_gen
from .runtime_eval import cmd_eval
from .train_loop import cmd_train


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=RECIPE.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(DATA_DIR))
    ap.add_argument("--out", default=str(DEMO_DRAFT_DIR))
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="target greedy replies to generated prompts (resumable)")
    g.add_argument("--minutes", type=float, default=35)
    g.add_argument("--num-prompts", type=int, default=6000)
    g.add_argument("--heldout", type=int, default=60)
    g.add_argument("--batch", type=int, default=48)
    g.add_argument("--magpie", type=float, default=0.65,
                   help="share of the prompts written by the target itself (the rest from templates)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    t = sub.add_parser("train", help="distil the draft")
    t.add_argument("--minutes", type=float, default=50)
    t.add_argument("--init-layers", default="0,4,8,12,16,20,24,29")
    t.add_argument("--init-from", default=None,
                   help="warm start: a draft directory whose layers (and norm) replace the target's")
    t.add_argument("--output-vocab", type=int, default=16384,
                   help="ids the draft's output layer scores (the rest get probability 0)")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--batch-tokens", type=int, default=4096)
    t.add_argument("--hard-weight", type=float, default=1.0)
    t.add_argument("--eval-every", type=float, default=4.0, help="minutes")
    e = sub.add_parser("eval", help="acceptance with the real runtime on specdec/configs/demo_prompts.toml")
    e.add_argument("--speculation", default="chain,tree", help="modes to evaluate, comma-separated")
    e.add_argument("--prompts", type=int, default=0, help="only the first N prompts (0: all 20)")
    e.add_argument("--max-new-tokens", type=int, default=128)
    e.add_argument("--check", type=int, default=3,
                   help="prompts also run in float32, where speculative ids must equal plain decoding's "
                        "exactly (every prompt is compared in bf16 too)")
    e.add_argument("--record", action="store_true", help="write the numbers into specdec_draft.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"gen": cmd_gen, "train": cmd_train, "eval": cmd_eval}[args.cmd](args)

