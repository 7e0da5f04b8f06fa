r"""Distil a draft from the broad corpus, resumable across sessions:

  python -m tools.draft.distil_corpus --data data/draft_corpus --labels results/draft_labels \
      --checkpoint results/draft_ckpt.pt --steps 4000 --minutes 50 \
      --init-from specdec/demo_draft --out results/draft_new

Labels first (tools/draft/labels.py: the target's top-16 at every assistant position, cached
per shard), then AdamW steps on soft cross-entropy to that distribution + cross-entropy to its
argmax (tools/draft/distil.py's loss), the learning rate a function of the step (warmup, cosine
to --steps), so a run stopped by --minutes or a signal and started again with the same
--checkpoint continues the same schedule. The checkpoint (draft layers, optimizer, step,
random states, output ids) is replaced atomically every --checkpoint-every minutes and at the
end. One conversation in --holdout-every is held out (by a hash of its tokens, so a growing
corpus never moves one into training); the best held-out agreement picks what goes to --out,
and a new run measures its starting point first (step 0: with --init-from, the warm start), so
--out stays the warm start unless training beat it there.
--mix DATA:LABELS:SHARE (repeatable) adds another labelled corpus, e.g. offline text
(tools/draft/offline_text.py, labelled by tools/draft/labels.py --dtype bf16): SHARE of the
steps take their batch from it (the rest from --data); only its shards already labelled are
used, and the selection stays on --data's held-out replies. --anchor-weight adds
weight x sum((p - p0)^2) over the trained weights, p0 the warm start's (L2-SP): a pull toward
what the warm start knew, at no extra forward pass. --anchor-kl W adds W x KL(warm start's
distribution || the trained draft's) on the batch's positions: a pull on what the warm start
predicts rather than on its weights (one more forward pass of the frozen warm start a step).
The independent prompts (tools/draft/eval_prompts_independent.toml) are never read here:
measure a result with `python -m tools.draft.measure --draft DIR`."""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import random
import signal
import time
from pathlib import Path

import torch

from specdec.demo_model import GGUF_NAME

from .corpus_shards import Conversation, Corpus
from .distil import (OutputVocab, _previous_run, agreement_on, build_draft, compute_dtype,
                     draft_logits, draft_loss_logits, length_batches, save_draft, select_output_ids)
from .files import TOPK, write_atomic
from .grow import grow_draft, parse_grow, target_layers
from .heap import cap_mmap_threshold
from .labels import Example, label_corpus, load_cached, target_positions


def held_out(example: Example, every: int) -> bool:
    digest = hashlib.sha256(example.ids.numpy().astype("uint16").tobytes()).digest()
    return int.from_bytes(digest[:4], "little") % every == 0


def replies_only(example: Example, conv: Conversation) -> Example:
    """The example's assistant positions only: what a draft proposes in chat, so the held-out
    agreement means the same whether training used --all-positions or not."""
    keep = torch.isin(example.targets, torch.tensor(target_positions(conv, False), dtype=torch.long))
    return Example(example.ids, example.targets[keep], example.top_v[keep], example.top_i[keep])


def load_examples(corpus: Corpus, cache: Path, all_positions: bool, every: int,
                  labelled_only: bool = False):
    train, held = [], []
    for entry in corpus.shards:
        if not entry["conversations"]:
            continue
        examples = load_cached(cache, entry, all_positions)
        if examples is None and labelled_only:
            continue
        if examples is None:
            raise SystemExit(f"{entry['file']} has no labels in {cache}: run tools.draft.labels")
        convs = corpus.read(entry) if all_positions else [None] * len(examples)
        for e, conv in zip(examples, convs):
            if held_out(e, every):
                held.append(replies_only(e, conv) if all_positions else e)
            else:
                train.append(e)
    return train, held


def make_batch(examples: list[Example]):
    """Right-padded (causal attention: pads at the right never reach real positions)."""
    width = max(len(e.ids) for e in examples) - 1
    inp = torch.zeros((len(examples), width), dtype=torch.long)
    rows, cols, tv, ti = [], [], [], []
    for r, e in enumerate(examples):
        inp[r, :len(e.ids) - 1] = e.ids[:-1]
        rows.append(torch.full((len(e.targets),), r))
        cols.append(e.targets - 1)
        tv.append(e.top_v.float())
        ti.append(e.top_i.long())
    return inp, torch.cat(rows), torch.cat(cols), torch.cat(tv), torch.cat(ti)


def batches(examples: list[Example], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """One epoch's batches as indices into examples (length-bucketed: distil.length_batches)."""
    return length_batches([len(e.ids) for e in examples], batch_tokens, rng)


def kl_to_reference(reference, vocab: OutputVocab, batch, logits: torch.Tensor, dtype) -> torch.Tensor:
    """Mean KL(reference || trained) over the batch's positions. The reference is frozen, so
    its forward pass needs no graph; the same precision as training, so a step of no change
    costs no KL beyond rounding."""
    inp, rows, cols, _, _ = batch
    with torch.no_grad():
        logq0 = torch.log_softmax(draft_logits(reference, vocab, inp, rows, cols, dtype).float(), -1)
    logq = torch.log_softmax(logits.float(), -1)
    return (logq0.exp() * (logq0 - logq)).sum(-1).mean()


def lr_at(step: int, args) -> float:
    warm = min(1.0, (step + 1) / args.warmup)
    frac = min(step / max(args.steps, 1), 1.0)
    return args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def output_ids(init_from: Path | None, train: list[Example], n: int, vocab: int) -> torch.Tensor:
    """A warm start keeps its draft's output ids (its head's rows); else the most written."""
    if init_from is not None:
        from safetensors.torch import load_file

        from specdec.weights import OUTPUT_IDS

        ids = load_file(str(init_from / "model.safetensors")).get(OUTPUT_IDS)
        if ids is not None:
            return ids.long()
    return select_output_ids([(None, None, None, e.top_i) for e in train], n, vocab)


class Run:
    """The trainable state and where it is saved."""

    def __init__(self, args, draft, vocab: OutputVocab):
        self.args, self.draft, self.vocab = args, draft, vocab
        self.params = [p for p in draft.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.step, self.best, self.curve = 0, -1.0, []
        self.rng = random.Random(args.seed)
        self.order: list[list[int]] = []  # the epoch's batches still to run
        self.n_train = 0
        self.mix_orders: dict[int, list[list[int]]] = {}  # the same for each --mix source
        self.mix_n: dict[int, int] = {}
        self.mix_info: list[dict] = []  # what --mix added, for the draft's sidecar
        self.anchor = [p.detach().clone() for p in self.params] if getattr(args, "anchor_weight", 0) else None
        self.dtype = compute_dtype(getattr(args, "precision", "auto"))
        # The KL anchor's reference: the draft as built, i.e. the warm start (a resumed run is
        # built the same way before restore(), so it gets the same reference; never saved).
        self.reference = None
        if getattr(args, "anchor_kl", 0):
            self.reference = copy.deepcopy(draft).eval().requires_grad_(False)

    def state(self) -> dict:
        trainable = {k: v for k, v in self.draft.state_dict().items()
                     if k not in ("model.embed_tokens.weight", "lm_head.weight")}
        return {"draft": trainable, "opt": self.opt.state_dict(), "step": self.step,
                "best": self.best, "curve": self.curve, "rng": self.rng.getstate(),
                "torch_rng": torch.get_rng_state(), "vocab_ids": self.vocab.ids,
                "order": self.order, "n_train": self.n_train, "mix_orders": self.mix_orders,
                "mix_n": self.mix_n}

    def save(self, path: Path) -> None:
        state = self.state()
        write_atomic(path, lambda p: torch.save(state, p))

    def restore(self, path: Path) -> None:
        state = torch.load(path, weights_only=False)
        if not torch.equal(state["vocab_ids"], self.vocab.ids):
            raise SystemExit(f"{path}: its output ids differ from this run's (another --init-from "
                             f"or --output-vocab?); use a new --checkpoint")
        self.draft.load_state_dict(state["draft"], strict=False)
        self.opt.load_state_dict(state["opt"])
        self.step, self.best, self.curve = state["step"], state["best"], state["curve"]
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self.order, self.n_train = state["order"], state["n_train"]
        self.mix_orders, self.mix_n = state.get("mix_orders", {}), state.get("mix_n", {})

    def next_batch(self, train: list[Example], mix: list[tuple[float, list[Example]]]) -> list[Example]:
        """The step's batch: from --mix source k with chance its share, else from the corpus."""
        u, k = self.rng.random(), None
        for j, (share, examples) in enumerate(mix):
            if u < share and examples:
                k = j
                break
            u -= share
        if k is None:
            if len(train) != self.n_train:  # a grown corpus: its indices moved, start a new epoch
                self.order, self.n_train = [], len(train)
            if not self.order:
                self.order = batches(train, self.args.batch_tokens, self.rng)
            return [train[j] for j in self.order.pop()]
        examples = mix[k][1]
        if len(examples) != self.mix_n.get(k):
            self.mix_orders[k], self.mix_n[k] = [], len(examples)
        if not self.mix_orders[k]:
            self.mix_orders[k] = batches(examples, self.args.batch_tokens, self.rng)
        return [examples[j] for j in self.mix_orders[k].pop()]

    def train_step(self, train: list[Example], mix=()) -> float:
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.args)
        batch = make_batch(self.next_batch(train, list(mix)))
        loss, _, logits = draft_loss_logits(self.draft, self.vocab, batch, self.args.hard_weight,
                                            self.dtype)
        if self.reference is not None:
            loss = loss + self.args.anchor_kl * kl_to_reference(self.reference, self.vocab, batch,
                                                                logits, self.dtype)
        if self.anchor is not None:
            loss = loss + self.args.anchor_weight * sum(((p - p0) ** 2).sum()
                                                        for p, p0 in zip(self.params, self.anchor))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.step += 1
        return loss.item()


DEFAULT_INIT_LAYERS = "0,4,8,12,16,20,24,29"


def layer_list(spec: str) -> list[int]:
    return [int(x) for x in spec.split(",")]


def resolve_init_layers(init_layers: str | None, init_from: str | None) -> str:
    """The target layers the draft's layers start from: as given, else the warm start's own
    (its sidecar's init_from_target_layers: a grown 12-layer draft resumes as 12 layers), else
    the 8-layer default. A count that does not match the warm start's is refused here, by name,
    rather than as a state-dict mismatch after the target has loaded."""
    side = Path(init_from) / "specdec_draft.json" if init_from else None
    known = json.loads(side.read_text()).get("init_from_target_layers") if side and side.exists() else None
    if init_layers is None:
        return ",".join(map(str, known)) if known else DEFAULT_INIT_LAYERS
    if known and len(layer_list(init_layers)) != len(known):
        raise SystemExit(f"--init-layers names {len(layer_list(init_layers))} layers but the warm start "
                         f"{init_from} has {len(known)} (its target layers: {known}); leave "
                         "--init-layers out to start from the warm start's own")
    return init_layers


def prepare(args):
    from .target import load_target

    corpus = Corpus(args.data)
    if not corpus.shards:
        raise SystemExit(f"{args.data}: no corpus there (grow one with tools.draft.corpus_gen)")
    _, _, target = load_target(torch.float32)
    label_corpus(corpus, Path(args.labels), target, args.all_positions,
                 log=lambda m: print(m, flush=True))
    train, held = load_examples(corpus, Path(args.labels), args.all_positions, args.holdout_every)
    init_from = Path(args.init_from) if args.init_from else None
    draft = build_draft(target, layer_list(args.init_layers), init_from)
    draft = grow_draft(draft, target, parse_grow(args.grow))
    vocab = OutputVocab(output_ids(init_from, train, args.output_vocab, draft.config.vocab_size),
                        draft.config.vocab_size)
    mix = []
    for spec in args.mix or []:
        data, labels, share = spec.rsplit(":", 2)
        examples, _ = load_examples(Corpus(data), Path(labels), False, args.holdout_every,
                                    labelled_only=True)
        mix.append((float(share), examples))
    return corpus, train, held, draft, vocab, mix


def train(args) -> None:
    torch.manual_seed(args.seed)
    corpus, train_set, held, draft, vocab, mix = prepare(args)
    n_pos = sum(len(e.targets) for e in train_set)
    print(f"train: {len(train_set)} conversations, {n_pos} positions; held out: {len(held)}", flush=True)
    for spec, (_, examples) in zip(args.mix or [], mix):
        print(f"mix {spec}: {len(examples)} passages, {sum(len(e.targets) for e in examples)} "
              f"positions", flush=True)
    run = Run(args, draft, vocab)
    run.mix_info = [{"source": spec, "share": share, "positions": sum(len(e.targets) for e in ex)}
                    for spec, (share, ex) in zip(args.mix or [], mix)]
    ckpt = Path(args.checkpoint)
    if ckpt.exists():
        run.restore(ckpt)
        print(f"resumed from {ckpt} at step {run.step}", flush=True)
    if run.step == 0 and not run.curve:  # the starting point's held-out agreement, the bar to beat
        evaluate(run, held, [], args, corpus, n_pos)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    start = last = time.time()
    losses = []
    try:
        while run.step < args.steps and time.time() - start < args.minutes * 60 and not stop["now"]:
            losses.append(run.train_step(train_set, mix))
            if run.step % args.eval_steps == 0 or run.step == args.steps:
                evaluate(run, held, losses, args, corpus, n_pos)
                losses = []
            if time.time() - last > args.checkpoint_every * 60:
                run.save(ckpt)
                last = time.time()
    except KeyboardInterrupt:
        print("interrupted: saving the checkpoint", flush=True)
    run.save(ckpt)
    print(f"step {run.step} of {args.steps}; checkpoint {ckpt}; best held-out top1 {run.best:.4f}", flush=True)


def evaluate(run: Run, held: list[Example], losses: list[float], args, corpus: Corpus, n_pos: int) -> None:
    # float32, so the curve means the same whatever precision the steps ran in
    held_batches = (make_batch(held[s:s + 8]) for s in range(0, len(held), 8))
    a = agreement_on(run.draft, run.vocab, held_batches, autocast=False)["top1"]
    run.curve.append({"step": run.step, "heldout_top1": round(a, 4)})
    loss = f"{sum(losses) / len(losses):.3f}" if losses else "-"
    print(f"step {run.step} lr {lr_at(run.step, args):.2e} loss {loss} held-out top1 {a:.4f}", flush=True)
    if a > run.best:
        run.best = a
        init_from = Path(args.init_from) if args.init_from else None
        meta = {"embeddings_from_target": True, "target": GGUF_NAME,
                "layers": run.draft.config.num_hidden_layers,
                "init_from_target_layers": target_layers(layer_list(args.init_layers),
                                                         parse_grow(getattr(args, "grow", None))),
                "grown": getattr(args, "grow", None),
                "warm_start": _previous_run(init_from), "output_vocab": len(run.vocab.ids),
                "corpus": {"dir": str(args.data), **corpus.manifest.get("totals", {}),
                           "recipe": corpus.manifest.get("recipe")},
                "train_positions": n_pos,
                "mix": run.mix_info,
                "anchor": f"{args.anchor_weight} x sum((p - p0)^2), p0 the warm start (L2-SP)"
                          if args.anchor_weight else None,
                "anchor_kl": f"{args.anchor_kl} x KL(warm start || draft) on the batch positions"
                             if getattr(args, "anchor_kl", 0) else None,
                "positions": "all (user turns and system prompt too)" if args.all_positions else "assistant",
                "heldout_conversations": len(held), "heldout_positions": "assistant", "lr": args.lr,
                "batch_tokens": args.batch_tokens, "steps": run.step, "schedule_steps": args.steps,
                "loss": f"soft CE to target top-{TOPK} + {args.hard_weight} x CE to target argmax",
                "precision": str(run.dtype).removeprefix("torch."),
                "seed": args.seed, "heldout_top1": round(a, 4), "curve": run.curve}
        save_draft(run.draft, run.vocab, Path(args.out), meta)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="corpus directory (tools.draft.corpus_gen)")
    ap.add_argument("--labels", required=True, help="label cache directory (tools.draft.labels)")
    ap.add_argument("--checkpoint", required=True, help="resumed from if it exists")
    ap.add_argument("--out", required=True, help="the best draft goes here (never the shipped one "
                    "unless named: compare with tools.draft.measure first)")
    ap.add_argument("--init-from", default=None)
    ap.add_argument("--init-layers", default=None,
                    help="the target layers the draft's layers start from (default: the warm "
                         f"start's own, else {DEFAULT_INIT_LAYERS})")
    ap.add_argument("--grow", default=None, metavar="J:SRC,...",
                    help="insert a copy of target layer SRC after the warm start's layer J, its "
                         "output projections zeroed so the draft starts unchanged (tools/draft/grow.py)")
    ap.add_argument("--output-vocab", type=int, default=16384)
    ap.add_argument("--all-positions", action="store_true",
                    help="train on every position (the user turns, which the target wrote too, and "
                         "the system prompt); the held-out agreement stays on assistant positions")
    ap.add_argument("--mix", action="append", metavar="DATA:LABELS:SHARE",
                    help="another labelled corpus (e.g. tools.draft.offline_text's) that SHARE of "
                         "the steps draw their batch from; repeatable")
    ap.add_argument("--anchor-weight", type=float, default=0.0,
                    help="L2-SP: this x sum((p - p0)^2), p0 the warm start's weights")
    ap.add_argument("--anchor-kl", type=float, default=0.0, metavar="W",
                    help="W x KL(warm start's distribution || the draft's) on each batch's positions")
    ap.add_argument("--steps", type=int, default=4000, help="the schedule's length")
    ap.add_argument("--minutes", type=float, default=60, help="this run's time box")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--hard-weight", type=float, default=1.0)
    ap.add_argument("--holdout-every", type=int, default=25)
    ap.add_argument("--eval-steps", type=int, default=100)
    ap.add_argument("--checkpoint-every", type=float, default=5.0, help="minutes")
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                    help="bf16 autocast or float32 (auto: bf16 where the CPU has bf16 instructions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    args.init_layers = resolve_init_layers(args.init_layers, args.init_from)
    torch.set_num_threads(args.threads)
    cap_mmap_threshold()      # else the process grows by GBs over a long run (tools/draft/heap.py)
    train(args)


if __name__ == "__main__":
    main()
