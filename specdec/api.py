"""The public API: load(...) -> SpecDecoder with generate / stream / chat."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from .compute.profile import pass_profile
from .draft import Drafter
from .engine import Engine, GenerationStats
from .loading import LoadedModel, load_tokenizer
from .sampling import SamplingParams
from .speculate import (Chain, DraftLengthPolicy, Lookup, LookupPolicy, Overlap, Plain, Strategy, Tree,
                        TreeSettings)
from .text import TextAssembler

SPECULATION_MODES = ("chain", "tree", "overlap", "lookup")  # lookup: no draft model (draft="lookup")


class VocabularyMismatch(ValueError):
    """Draft and target do not share token ids."""


class DecoderBusy(RuntimeError):
    """A second call reached a decoder that is still generating."""


@dataclass
class GenerationOutput:
    text: str
    token_ids: list[int]
    stats: GenerationStats


class SpecDecoder:
    def __init__(self, target: LoadedModel, draft: LoadedModel | None, max_context: int,
                 k: int | None = None, bytes_read=lambda: 0, plan=None, closer=None,
                 speculation: str = "chain", tree_nodes: int | None = None, tree_width: int = 4,
                 lookup_branches: int | None = None):
        self.target = target
        self.draft = draft
        self.tokenizer = load_tokenizer(target.tokenizer_source)
        if draft is not None:
            check_same_vocabulary(target, draft, self.tokenizer)
        self.eos_ids = target.eos_ids() | _tokenizer_eos(self.tokenizer)
        strategy = _strategy(draft, max_context, target.args.vocab_size, k, speculation,
                             tree_nodes, tree_width, getattr(target.model.weights, "stats", None),
                             lookup_branches,
                             pass_profile(target.model))
        self.engine = Engine(target.model, strategy, max_context, bytes_read)
        self.plan = plan
        self.last_stats: GenerationStats | None = None
        self._lock = threading.Lock()
        self._closer = closer

    # -- public -------------------------------------------------------------------------
    def generate(self, prompt, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = 0,
                 repetition_penalty: float = 1.0, repetition_window: int = 64,
                 stop: list[str] | None = None) -> GenerationOutput:
        ids = self._encode(prompt)
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty, repetition_window)
        return self._collect(ids, max_new_tokens, params, seed, stop)

    def stream(self, prompt, max_new_tokens: int = 128, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, seed: int | None = 0,
               repetition_penalty: float = 1.0, repetition_window: int = 64,
               stop: list[str] | None = None) -> Iterator[str]:
        """Text deltas as tokens are accepted; stats of the run in `last_stats`.

        Sampling (every method): temperature 0 is greedy; top_k / top_p narrow the choice;
        repetition_penalty > 1 discourages tokens among the last `repetition_window` (0 =
        the whole context), as transformers and llama.cpp do. Speculation stays exact: the
        output is what the target alone gives under the same settings."""
        ids = self._encode(prompt)
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty, repetition_window)
        for delta, _ in self._run(ids, max_new_tokens, params, seed, stop):
            if delta:
                yield delta

    def chat(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: int | None = 0,
             repetition_penalty: float = 1.0, repetition_window: int = 64,
             stop: list[str] | None = None, stream: bool = False):
        """Reply to a conversation using the tokenizer's chat template. The caches are kept
        between calls, so a next turn only prefills what is new. With stream=True, returns
        an iterator of text deltas (stats in `last_stats`)."""
        ids = self._chat_ids(messages)
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty, repetition_window)
        if stream:
            return (d for d, _ in self._run(ids, max_new_tokens, params, seed, stop) if d)
        return self._collect(ids, max_new_tokens, params, seed, stop)

    # -- for front ends that manage the context themselves (the chat REPL, `generate`) -----
    @property
    def max_context(self) -> int:
        """Tokens the KV caches hold: prompt plus reply must fit."""
        return self.engine.max_context

    @property
    def context_used(self) -> int:
        """Tokens of the conversation the caches hold now."""
        return len(self.engine.context)

    def encode(self, prompt) -> list[int]:
        """A plain prompt's token ids (text, or ids checked against the vocabulary)."""
        return self._encode(prompt)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """A conversation's token ids under the chat template, generation prompt included."""
        return self._chat_ids(messages)

    def has_chat_template(self) -> bool:
        return self.tokenizer is not None and bool(getattr(self.tokenizer, "chat_template", None))

    def stream_ids(self, ids: list[int], max_new_tokens: int = 128, temperature: float = 0.0,
                   top_p: float = 1.0, top_k: int = 0, seed: int | None = 0,
                   repetition_penalty: float = 1.0, repetition_window: int = 64,
                   stop: list[str] | None = None) -> Iterator[tuple[str, list[int]]]:
        """(text delta, new token ids) as tokens are accepted, for prompt `ids`; stats of
        the run in `last_stats`. The caches are reused for a shared prefix, as in chat()."""
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty, repetition_window)
        return self._run(list(ids), max_new_tokens, params, seed, stop)

    def reset(self) -> None:
        """Forget the cached conversation."""
        with self._guard():
            self.engine.reset()

    def close(self) -> None:
        if self._closer is not None:
            self._closer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ------------------------------------------------------------------------
    def _collect(self, ids, max_new_tokens, params, seed, stop) -> GenerationOutput:
        out_ids: list[int] = []
        text = ""
        for delta, new in self._run(ids, max_new_tokens, params, seed, stop):
            out_ids.extend(new)
            text += delta
        return GenerationOutput(text, out_ids, self.last_stats)

    def _run(self, ids: list[int], max_new_tokens: int, params: SamplingParams, seed, stop
             ) -> Iterator[tuple[str, list[int]]]:
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model has none.")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        stats = GenerationStats()
        self.last_stats = stats
        assembler = TextAssembler(self.tokenizer, stop) if self.tokenizer is not None else None
        with self._guard():
            started = time.perf_counter()
            run = self.engine.run(ids, max_new_tokens, params, generator, self.eos_ids, stats)
            try:
                for new in run:
                    stats.seconds = time.perf_counter() - started
                    delta = assembler.push(new) if assembler else ""
                    yield delta, new
                    if assembler and assembler.stopped:
                        stats.stop_reason = "stop_string"
                        break
            finally:
                run.close()
                stats.seconds = time.perf_counter() - started

    def _guard(self):
        lock = self._lock

        class _Guard:
            def __enter__(self_):
                if not lock.acquire(blocking=False):
                    raise DecoderBusy("this decoder is already generating (another thread, or an "
                                      "unfinished stream). Finish or close that call first, or "
                                      "load one decoder per thread.")

            def __exit__(self_, *exc):
                lock.release()
        return _Guard()

    def _encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"{self.target.path}: this model has no tokenizer files; pass the "
                                 "prompt as a list of token ids, or add tokenizer.json to its directory.")
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        ids = list(prompt)
        vocab = self.target.args.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}).")
        return ids

    def _chat_ids(self, messages: list[dict]) -> list[int]:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.target.path}: this model has no chat template; use "
                             "generate() with a plain prompt.")
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m
                                   for m in messages):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return list(ids)


def check_same_vocabulary(target: LoadedModel, draft: LoadedModel, target_tokenizer) -> None:
    """Draft ids must mean the same tokens as the target's; padded sizes may differ."""
    draft_tokenizer = load_tokenizer(draft.tokenizer_source)
    if target_tokenizer is None or draft_tokenizer is None:
        # Nothing to compare but the sizes: different sizes are different vocabularies.
        if draft.args.vocab_size != target.args.vocab_size:
            raise VocabularyMismatch(
                f"draft {draft.path} (vocab_size {draft.args.vocab_size}) and target {target.path} "
                f"(vocab_size {target.args.vocab_size}) have different vocabularies, and without "
                "tokenizer files in both there is no way to tell that their ids agree. Use a "
                "draft from the same model family, or add both models' tokenizer files.")
        return
    t, d = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if t != d:
        differing = len(set(t.items()) ^ set(d.items()))
        raise VocabularyMismatch(
            f"draft {draft.path} and target {target.path} have different vocabularies "
            f"({len(d)} vs {len(t)} tokens, {differing} entries differ). Speculative decoding "
            "needs a draft from the same model family with the same tokenizer.")


def _strategy(draft: LoadedModel | None, max_context: int, target_vocab: int, k: int | None,
              speculation: str, tree_nodes: int | None, tree_width: int,
              source_stats=None, lookup_branches: int | None = None, profile=None) -> Strategy:
    """The speculation strategy for these settings (validated even when there is no draft).
    `source_stats`: the target's stream stats (None in RAM), for the overlapped tree's cost
    model. `profile`: the target's pass-time curve from the kernel probe (specdec.compute),
    which the cost models start from. `lookup_branches`: prompt-lookup nodes grafted onto a
    tree (None: up to DEFAULT_LOOKUP_BRANCHES on an adaptive tree, none on a fixed one)."""
    if speculation not in SPECULATION_MODES:
        raise ValueError(f"speculation must be one of {SPECULATION_MODES}, got {speculation!r}")
    seconds = profile.seconds if profile is not None else None
    lookup = _lookup_branches(lookup_branches, speculation, tree_nodes)
    if speculation == "lookup":
        if draft is not None:
            raise ValueError(f"speculation='lookup' drafts from the context, not from a model, but "
                             f"draft {draft.path} was given; pass draft='lookup' alone, or "
                             "speculation='chain' / 'tree' to use the draft model.")
        return Lookup(LookupPolicy(k, profile=seconds))
    policy = DraftLengthPolicy(k, profile=seconds)
    tree = _tree_settings(tree_nodes, tree_width, lookup)
    if draft is None:
        return Plain()
    drafter = Drafter(draft.model, max_context, target_vocab)
    if speculation == "overlap":
        return Overlap(drafter, tree, source_stats=source_stats, profile=seconds)
    if speculation == "tree":
        return Tree(drafter, tree, profile=seconds)
    return Chain(drafter, policy)


def _tree_settings(nodes: int | None, width: int, lookup: int = 0) -> TreeSettings:
    for name, value in (("tree_nodes", nodes), ("tree_width", width)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if nodes is None:
        return TreeSettings(width=width, lookup=lookup)
    return TreeSettings(max_nodes=nodes, width=width, fixed=True, lookup=lookup)


DEFAULT_LOOKUP_BRANCHES = 8  # nodes, on an adaptive tree: sized per pass by their measured worth


def _lookup_branches(nodes: int | None, speculation: str, tree_nodes: int | None) -> int:
    """Prompt-lookup nodes to graft onto each draft tree (speculate/lookup_branches.py)."""
    if nodes is None:
        return DEFAULT_LOOKUP_BRANCHES if speculation == "tree" and tree_nodes is None else 0
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 0:
        raise ValueError(f"lookup_branches must be an integer >= 0 (0: none), got {nodes!r}")
    if nodes and speculation != "tree":
        raise ValueError(f"lookup_branches adds prompt-lookup nodes to a draft tree, but speculation="
                         f"{speculation!r}; use speculation='tree' with a draft model, or "
                         "draft='lookup' for lookup alone.")
    return nodes


def _tokenizer_eos(tokenizer) -> set[int]:
    if tokenizer is None or tokenizer.eos_token_id is None:
        return set()
    return {int(tokenizer.eos_token_id)}
