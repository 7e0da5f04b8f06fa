"""Grow the broad draft corpus: conversations the demo target writes on both sides, in shards
that accumulate across runs (tools/draft/corpus_shards.py).

  python -m tools.draft.corpus_gen --data results/draft_corpus --minutes 60   # resumes

Each shard is one batch: a plan (greedy or sampled replies, 128/256/512 new tokens, 1-3
turns) and one opening per conversation (tools/draft/corpus_recipe.py). The target writes
the user turns it is asked to (from its template, or finishing an opener), answers them,
then writes and answers follow-ups. Every user turn passes tools/draft/held_out.py first:
one it refuses drops the conversation (or ends it before that turn). The shard's seed is a
function of the run's seed and the shard's index, so the corpus is the same whatever the
runs it took to grow. SIGINT/SIGTERM abandon the batch under way and leave the corpus whole."""
from __future__ import annotations

import argparse
import random
import signal
import time
from dataclasses import asdict

import torch

from .batch_decode import GENERATOR, decode_batch
from .corpus_recipe import RECIPE_VERSION, BatchPlan, Opening, plan_batch, plan_opening
from .corpus_shards import Conversation, Corpus
from .distil import compute_dtype
from .held_out import HeldOut

MAX_CONTEXT = 1536  # no follow-up past this many tokens (the demo runs at 2048)
USER_TOKENS = 96
MATERIAL_SHARDS = 20  # replies to rewrite or summarise come from this many latest shards


class TargetWriter:
    """The target writing user turns and replies, batched with left padding."""

    def __init__(self, tok, model):
        self.tok, self.model = tok, model
        self.end = tok.convert_tokens_to_ids("<|im_end|>")
        self.record = generation_record(next(model.parameters()).dtype)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def head(self, system: str | None) -> list[int]:
        """The template up to a first user turn's text (with the default system prompt if None)."""
        msgs = ([{"role": "system", "content": system}] if system else []) + \
               [{"role": "user", "content": "\x00"}]
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        return self.encode(text[:text.index("\x00")])

    def generate(self, contexts: list[list[int]], max_new: int, sample: bool, temperature: float,
                 top_p: float) -> list[tuple[list[int], bool]]:
        """New tokens per context, cut after <|im_end|>; with whether it ended."""
        return decode_batch(self.model, contexts, max_new, self.end,
                            temperature if sample else 0.0, top_p)


class ConversationBuilder:
    """One batch of conversations, turn by turn."""

    def __init__(self, writer: TargetWriter, held: HeldOut, plan: BatchPlan):
        self.w, self.held, self.plan = writer, held, plan
        self.refused = 0
        self._user_tag = writer.encode("\n<|im_start|>user\n")
        self._assistant_tag = writer.encode("<|im_end|>\n<|im_start|>assistant\n")

    def first_turns(self, openings: list[Opening]) -> list[Conversation]:
        heads = [self.w.head(o.system) for o in openings]
        texts = [o.user for o in openings]
        todo = [j for j, o in enumerate(openings) if o.user is None]
        if todo:
            written = self._user_turns([heads[j] + self.w.encode(openings[j].opener) for j in todo])
            for j, text in zip(todo, written):
                # the continuation keeps its leading space ("How do I" + " bake ...")
                texts[j] = (openings[j].opener + text).strip() if text is not None else None
        convs = []
        for o, head, text in zip(openings, heads, texts):
            if text is None or self._refuse(text):
                continue
            meta = {"kind": o.kind, "system": o.system, "users": [text], **asdict(self.plan)}
            convs.append(Conversation(head + self.w.encode(text) + self._assistant_tag, [], meta))
        return convs

    def replies(self, convs: list[Conversation]) -> list[Conversation]:
        """Answer each conversation's last user turn; returns those that may go on."""
        p = self.plan
        out = self.w.generate([c.ids for c in convs], p.max_new_tokens, not p.greedy,
                              p.temperature, p.top_p)
        going = []
        for c, (new, ended) in zip(convs, out):
            c.spans.append((len(c.ids), len(c.ids) + len(new)))
            c.ids += new
            if ended and len(c.ids) < MAX_CONTEXT:
                going.append(c)
        return going

    def follow_ups(self, convs: list[Conversation]) -> list[Conversation]:
        """The target writes each conversation's next user turn; returns those that got one."""
        written = self._user_turns([c.ids + self._user_tag for c in convs])
        going = []
        for c, text in zip(convs, written):
            text = text.strip() if text is not None else None
            if text is None or self._refuse(text):
                continue
            c.ids += self._user_tag + self.w.encode(text) + self._assistant_tag
            c.meta["users"].append(text)
            going.append(c)
        return going

    def _user_turns(self, prefixes: list[list[int]]) -> list[str | None]:
        out = self.w.generate(prefixes, USER_TOKENS, True, self.plan.user_temperature, 0.95)
        texts = []
        for new, ended in out:
            text = self.w.tok.decode(new[:-1]) if ended else ""
            texts.append(text if len(text.split()) >= 2 else None)
        return texts

    def _refuse(self, text: str) -> bool:
        if self.held.refuses(text):
            self.refused += 1
            return True
        return False


def build_batch(writer: TargetWriter, held: HeldOut, rng: random.Random, material: list[str],
                size_for) -> tuple[list[Conversation], int, BatchPlan]:
    """One shard's conversations, the number of user turns the held-out guard refused, the plan."""
    plan = plan_batch(rng)
    openings = [plan_opening(rng, material) for _ in range(size_for(plan))]
    b = ConversationBuilder(writer, held, plan)
    convs = b.first_turns(openings)
    going = b.replies(convs) if convs else []
    for _ in range(plan.turns - 1):
        going = b.follow_ups(going)
        going = b.replies(going) if going else []
    return convs, b.refused, plan


def shard_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7_919) % (1 << 31)


def material_of(writer: TargetWriter, convs: list[Conversation]) -> list[str]:
    """A shard's finished replies of 30-200 words: text to rewrite or summarise later. Taken
    from the latest shards of the corpus only, so a shard's content does not depend on where
    the run that wrote it began."""
    out = []
    for c in convs:
        for s, e in c.spans:
            if c.ids[e - 1] == writer.end:
                text = writer.tok.decode(c.ids[s:e - 1]).strip()
                if 30 <= len(text.split()) <= 200:
                    out.append(text)
    return out


# what made the shards of a corpus begun before the generator and dtype were recorded
LEGACY_GENERATION = {"generator": "transformers generate (every row until the batch's last ends)",
                     "dtype": "float32"}


def generation_record(dtype: torch.dtype) -> dict:
    """The decoding code and the target's dtype: both change which tokens a seed gives (bf16
    rounds logits differently; the sampler draws per live row), so the manifest keeps them."""
    return {"generator": GENERATOR, "dtype": str(dtype).removeprefix("torch.")}


def recipe_record(args, generation: dict) -> dict:
    return {"version": RECIPE_VERSION, "seed": args.seed, "target": "SmolLM2-135M-Instruct Q4_1 GGUF, "
            "dequantised by transformers, run in `dtype`", "recipe": "tools/draft/corpus_recipe.py",
            "batch": args.batch, "long_batch": args.long_batch, **generation}


def run(args) -> None:
    from .target import load_target

    torch.set_num_threads(args.threads)
    dtype = compute_dtype(args.dtype)
    generation = generation_record(dtype)
    corpus = Corpus(args.data, recipe_record(args, generation))
    if corpus.shards and corpus.manifest["recipe"].get("seed") != args.seed:
        raise SystemExit(f"{args.data} was grown with --seed {corpus.manifest['recipe']['seed']}; "
                         f"resume with that seed or use a new --data directory")
    note_change(corpus, "batch_changes", {"batch": args.batch, "long_batch": args.long_batch})
    note_change(corpus, "generator_changes", generation, before=LEGACY_GENERATION)
    _, tok, model = load_target(dtype)
    writer, held = TargetWriter(tok, model), HeldOut()
    material = [material_of(writer, corpus.read(e)) for e in corpus.shards[-MATERIAL_SHARDS:]]
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    start = time.time()
    print(f"{args.data}: {len(corpus.shards)} shards, {corpus.manifest.get('totals', {})}", flush=True)
    try:
        while time.time() - start < args.minutes * 60 and not stop["now"]:
            grow_one(corpus, writer, held, material, args, start)
    except KeyboardInterrupt:
        print("stopped: the batch under way was dropped; the corpus is whole", flush=True)
    print(f"totals: {corpus.manifest.get('totals', {})}", flush=True)


def note_change(corpus: Corpus, key: str, settings: dict, before: dict | None = None) -> None:
    """Settings that change what a shard's seed gives (batch sizes: how many openings it plans;
    the generator and dtype: which tokens it samples): a resumed corpus whose latest settings
    differ records under recipe[key] the shard from which these apply; each shard also records
    its own. `before`: the settings of a corpus begun before the recipe named them."""
    recipe = corpus.manifest["recipe"]
    last = (recipe.get(key) or [{**(before or {}), **recipe}])[-1]
    if corpus.shards and any(last.get(k) != v for k, v in settings.items()):
        recipe.setdefault(key, []).append({"from_shard": len(corpus.shards), **settings})


def grow_one(corpus: Corpus, writer: TargetWriter, held: HeldOut, material: list[list[str]], args,
             start: float) -> None:
    index = len(corpus.shards)
    seed = shard_seed(args.seed, index)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    t0 = time.time()
    pool = [t for shard in material[-MATERIAL_SHARDS:] for t in shard]
    size = {}

    def size_for(p):
        size["batch"] = args.long_batch if p.max_new_tokens > 256 else args.batch
        return size["batch"]

    convs, refused, plan = build_batch(writer, held, rng, pool, size_for)
    # a shard with no conversation (every opening refused or unfinished) is still written:
    # it keeps the shard indices, and so the seeds, in step
    entry = corpus.append(convs, seed, {"refused_user_turns": refused, "recipe_version": RECIPE_VERSION,
                                              "batch": size["batch"], **writer.record})
    material.append(material_of(writer, convs))
    tot = corpus.manifest["totals"]
    print(f"[{(time.time() - start) / 60:6.1f} min] shard {index}: {entry['conversations']} convs, "
          f"{entry['assistant_tokens']} reply tokens in {time.time() - t0:.0f}s "
          f"({'greedy' if plan.greedy else f'T {plan.temperature}'}, {plan.max_new_tokens}, "
          f"{plan.turns} turns, {refused} refused); total {tot['assistant_tokens']} reply "
          f"tokens, {tot['tokens']} tokens", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="corpus directory (created, or resumed)")
    ap.add_argument("--minutes", type=float, default=60, help="stop starting batches after this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    # batched generation costs far less per token than one at a time, up to where a thread's
    # matrix products stop getting cheaper per row; memory stays ~2 GB at these sizes
    ap.add_argument("--batch", type=int, default=32, help="conversations per batch (replies <= 256)")
    ap.add_argument("--long-batch", type=int, default=16, help="conversations per batch (512 tokens)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                    help="the target's arithmetic (auto: bf16 where the CPU has bf16 instructions; "
                         "emulated bf16 is slower than float32)")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
