"""The target's top-k distribution at every position a draft trains on, computed by teacher
forcing over a corpus's conversations (tools/draft/corpus_shards.py) and cached per shard:

  python -m tools.draft.labels --data data/draft_corpus --cache results/draft_labels

A cache file (labels_NNNNN.pt) is named by its shard and records the shard's checksum: a
shard that changed is labelled again, one that did not is skipped, so the command resumes and
keeps up with a growing corpus. Positions: every token of an assistant span (what the draft
proposes in chat), or with --all-positions every token after the first (user turns too).
--dtype bf16 runs the target in bfloat16 (several times faster on a CPU with bf16 instructions;
the labels are stored in bf16 anyway, and its top-16 order differs from float32's only where two
logits are within bf16's rounding): fine for training, and the cache records which made it."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .corpus_shards import Conversation, Corpus
from .files import TOPK, write_atomic


@dataclass
class Example:
    """One conversation to train on: position t-1 predicts ids[t] for t in `targets`, and the
    target's top-k there is (top_v, top_i) row by row."""
    ids: torch.Tensor
    targets: torch.Tensor
    top_v: torch.Tensor
    top_i: torch.Tensor


def target_positions(conv: Conversation, all_positions: bool) -> list[int]:
    if all_positions:
        return list(range(1, len(conv.ids)))
    return [t for s, e in conv.spans for t in range(max(s, 1), e)]


@torch.no_grad()
def label_conversations(model, convs: list[Conversation], all_positions: bool,
                        batch_tokens: int = 4096) -> list[Example]:
    """The target's top-k logits (float32 model; stored bf16 values, int32 ids)."""
    head = model.get_output_embeddings().weight
    out = []
    order = sorted(range(len(convs)), key=lambda j: len(convs[j].ids))
    batch: list[int] = []

    def flush():
        width = max(len(convs[j].ids) for j in batch)
        inp = torch.zeros((len(batch), width), dtype=torch.long)
        for r, j in enumerate(batch):
            inp[r, :len(convs[j].ids)] = torch.tensor(convs[j].ids)
        hidden = model.model(input_ids=inp).last_hidden_state  # right pads never reach real rows
        for r, j in enumerate(batch):
            t = torch.tensor(target_positions(convs[j], all_positions), dtype=torch.long)
            v, i = (hidden[r, t - 1] @ head.t()).topk(TOPK, dim=-1)
            out.append((j, Example(inp[r, :len(convs[j].ids)].clone(), t, v.to(torch.bfloat16),
                                   i.to(torch.int32))))
        batch.clear()

    for j in order:
        if batch and (len(batch) + 1) * len(convs[j].ids) > batch_tokens:
            flush()
        batch.append(j)
    if batch:
        flush()
    return [e for _, e in sorted(out, key=lambda x: x[0])]


def cache_path(cache: Path, entry: dict) -> Path:
    return cache / f"labels_{entry['index']:05d}.pt"


def load_cached(cache: Path, entry: dict, all_positions: bool) -> list[Example] | None:
    path = cache_path(cache, entry)
    if not path.exists():
        return None
    rec = torch.load(path, weights_only=True)
    if rec["sha256"] != entry["sha256"] or rec["all_positions"] != all_positions:
        return None
    return [Example(*x) for x in rec["examples"]]


def label_corpus(corpus: Corpus, cache: Path, model, all_positions: bool, log=print,
                 limit: int = 0) -> int:
    """Label every shard not yet in the cache; returns how many were labelled now."""
    cache.mkdir(parents=True, exist_ok=True)
    done, positions, started = 0, 0, time.time()
    for entry in corpus.shards[:limit or None]:
        if not entry["conversations"] or load_cached(cache, entry, all_positions) is not None:
            continue
        examples = label_conversations(model, corpus.read(entry), all_positions)
        rec = {"sha256": entry["sha256"], "all_positions": all_positions,
               "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
               "examples": [(e.ids, e.targets, e.top_v, e.top_i) for e in examples]}
        write_atomic(cache_path(cache, entry), lambda p: torch.save(rec, p))
        done += 1
        n = sum(len(e.targets) for e in examples)
        positions += n
        log(f"labelled {entry['file']}: {n} positions "
            f"({positions / (time.time() - started):.0f} positions/s so far)")
    return done


def main(argv=None) -> None:
    from .target import load_target

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--all-positions", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--limit", type=int, default=0, help="only the first N shards")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, _, model = load_target(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    n = label_corpus(Corpus(args.data), Path(args.cache), model, args.all_positions,
                     log=lambda m: print(m, flush=True), limit=args.limit)
    print(f"{n} shards labelled", flush=True)


if __name__ == "__main__":
    main()
