"""`train`: distil the draft from the `gen` shards inside a time box, keeping the checkpoint
with the best held-out agreement."""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from specdec.demo_model import GGUF_NAME

from .distil import (OutputVocab, _previous_run, agreement, build_draft, draft_loss, length_batches,
                     make_batch, save_draft, select_output_ids)
from .files import TOPK, eval_prompts, write_json_atomic
from .target import load_target

def load_data(data_dir: Path):
    """(train, held, evalset): held = replies to the held-out generated prompts (what picks
    the checkpoint), evalset = replies to the 20 evaluation prompts (reported, never used to
    choose: they are the test)."""
    train, held, evalset = [], [], []
    eval_set = set(eval_prompts())
    for f in sorted(Path(data_dir).glob("shard_*.pt")):
        rec = torch.load(f, weights_only=True)
        for j in range(len(rec["ids"])):
            ex = (rec["ids"][j].long(), rec["n_prompt"][j], rec["top_v"][j].float(), rec["top_i"][j].long())
            if not rec["held"][j]:
                train.append(ex)
            else:
                (evalset if rec["prompt"][j] in eval_set else held).append(ex)
    return train, held, evalset


def cmd_train(args) -> None:
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train, held, evalset = load_data(Path(args.data))
    n_train_tok = sum(len(e[0]) - e[1] for e in train)
    print(f"train: {len(train)} replies, {n_train_tok} reply tokens; held-out: {len(held)} replies "
          f"(+ {len(evalset)} to the evaluation prompts, reported only)", flush=True)
    _, _, target = load_target(torch.float32)
    layers = [int(x) for x in args.init_layers.split(",")]
    init_from = Path(args.init_from) if args.init_from else None
    draft = build_draft(target, layers, init_from)
    del target
    vocab = OutputVocab(select_output_ids(train, args.output_vocab, draft.config.vocab_size),
                        draft.config.vocab_size)
    if init_from:
        print(f"warm start from {init_from}", flush=True)
    print(f"output vocabulary: {len(vocab.ids)} of {draft.config.vocab_size} ids", flush=True)
    params = [p for p in draft.parameters() if p.requires_grad]
    print(f"draft: {len(layers)} layers from target layers {layers}; "
          f"{sum(p.numel() for p in params) / 1e6:.1f}M trainable params", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    curve = []
    a0 = agreement(draft, vocab, held)
    e0 = agreement(draft, vocab, evalset)["top1"]
    curve.append({"minutes": 0.0, "step": 0, **a0, "eval_prompts_top1": e0})
    print(f"[init] held-out top1 {a0['top1']:.3f} top4 {a0['top4']:.3f} ({a0['tokens']} tokens); "
          f"evaluation prompts top1 {e0:.3f}", flush=True)
    best = a0["top1"]
    budget = args.minutes * 60
    start = time.time()
    last_eval = start
    step, epoch, seen_tok = 0, 0, 0
    order: list[int] = []
    run_top1, run_loss = [], []
    meta_base = {"embeddings_from_target": True, "target": GGUF_NAME,
                 "layers": len(layers), "init_from_target_layers": layers,
                 "warm_start": _previous_run(init_from),
                 "output_vocab": len(vocab.ids),
                 "train_replies": len(train), "train_reply_tokens": n_train_tok,
                 "heldout_replies": len(held), "lr": args.lr, "batch_tokens": args.batch_tokens,
                 "loss": f"soft CE to target top-{TOPK} + {args.hard_weight} x CE to target argmax",
                 "seed": args.seed}
    while time.time() - start < budget:
        if not order:
            epoch += 1
            order = length_batches([len(t[0]) for t in train], args.batch_tokens, rng)
        b = order.pop()
        frac = (time.time() - start) / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = make_batch([train[j] for j in b])
        loss, top1 = draft_loss(draft, vocab, batch, args.hard_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        seen_tok += len(top1)
        run_top1.append(top1.mean().item())
        run_loss.append(loss.item())
        if time.time() - last_eval > args.eval_every * 60 or time.time() - start >= budget:
            last_eval = time.time()
            a = agreement(draft, vocab, held)
            e = agreement(draft, vocab, evalset)["top1"]
            m = (time.time() - start) / 60
            curve.append({"minutes": round(m, 1), "step": step, "epoch": epoch, **a, "eval_prompts_top1": e})
            print(f"[{m:5.1f} min] step {step} epoch {epoch} lr {lr:.2e} loss {sum(run_loss) / len(run_loss):.3f} "
                  f"train top1 {sum(run_top1) / len(run_top1):.3f} | held-out top1 {a['top1']:.3f} "
                  f"top4 {a['top4']:.3f} | evaluation prompts top1 {e:.3f}", flush=True)
            run_top1, run_loss = [], []
            if a["top1"] > best:
                best = a["top1"]
                save_draft(draft, vocab, Path(args.out), {**meta_base, "steps": step, "epochs_seen": epoch,
                                                   "train_minutes": round(m, 1),
                                                   "heldout_top1": round(a["top1"], 4),
                                                   "heldout_top4": round(a["top4"], 4),
                                                   "curve": curve})
                print(f"  saved (best held-out top1 {best:.3f})", flush=True)
    # the curve up to the end, into the sidecar of the best checkpoint
    side = Path(args.out) / "specdec_draft.json"
    if side.exists():
        meta = json.loads(side.read_text())
        meta["curve"] = curve
        write_json_atomic(side, meta)
    print(f"done: {step} steps, best held-out top1 {best:.3f}", flush=True)
