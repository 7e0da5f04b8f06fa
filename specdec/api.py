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
from .moe_pass_cost import expert_pass_cost, pass_curve
from .sampling_params import SAMPLING_PRESETS, SamplingParams
from .speculate.registry import MODES, Inputs, Speculation, build_strategy
from .text import TextAssembler

SPECULATION_MODES = tuple(MODES)  # speculate/registry.py


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
                 speculation: Speculation = Speculation(), bytes_read=lambda: 0, plan=None,
                 closer=None, source_counters=dict, draft_kind=None):
        """`speculation`: resolved settings (LoadSettings.resolved_speculation); a mode that
        drafts with a model falls back to plain decoding when `draft` is None. `draft_kind`:
        the specdec.drafts.Draft that built `draft` (None: a plain model draft, or none)."""
        self.target = target
        self.draft = draft
        self.draft_kind = draft_kind
        self.tokenizer = load_tokenizer(target.tokenizer_source, target.config)
        if draft is not None:
            check_same_vocabulary(target, draft, self.tokenizer)
        self.eos_ids = target.eos_ids() | _tokenizer_eos(self.tokenizer)
        profile = pass_profile(target.model)
        # A MoE target reads more experts the more tokens a pass verifies: sizes know it.
        self.expert_cost = expert_pass_cost(target.model.weights, target.args)
        drafter = Drafter(draft.model, max_context, target.args.vocab_size) if draft else None
        strategy = build_strategy(Inputs(
            speculation, drafter, pass_curve(profile, self.expert_cost),
            getattr(target.model.weights, "stats", None)))
        self.engine = Engine(target.model, strategy, max_context, bytes_read, source_counters,
                             self.expert_cost.observe if self.expert_cost is not None else None)
        self.plan = plan
        self.last_stats: GenerationStats | None = None
        self._lock = threading.Lock()
        self._closer = closer

    # -- public -------------------------------------------------------------------------
    # Sampling, in every method: `sampling` (a SamplingParams; default: the "default"
    # preset, greedy with seed 0), with any of its fields given as keywords on top
    # (temperature=0.7, top_p=0.9, top_k, repetition_penalty, repetition_window, seed).
    # Speculation stays exact: the output is what the target alone gives under the same settings.
    def generate(self, prompt, max_new_tokens: int = 128, *, sampling: SamplingParams | None = None,
                 stop: list[str] | None = None, **settings) -> GenerationOutput:
        ids = self._encode(prompt)
        return self._collect(ids, max_new_tokens, _sampling(sampling, settings), stop)

    def stream(self, prompt, max_new_tokens: int = 128, *, sampling: SamplingParams | None = None,
               stop: list[str] | None = None, **settings) -> Iterator[str]:
        """Text deltas as tokens are accepted; stats of the run in `last_stats`."""
        ids = self._encode(prompt)
        params = _sampling(sampling, settings)
        for delta, _ in self._run(ids, max_new_tokens, params, stop):
            if delta:
                yield delta

    def chat(self, messages: list[dict], max_new_tokens: int = 256, *,
             sampling: SamplingParams | None = None, stop: list[str] | None = None,
             stream: bool = False, **settings):
        """Reply to a conversation using the tokenizer's chat template. The caches are kept
        between calls, so a next turn only prefills what is new. With stream=True, returns
        an iterator of text deltas (stats in `last_stats`)."""
        ids = self._chat_ids(messages)
        params = _sampling(sampling, settings)
        if stream:
            return (d for d, _ in self._run(ids, max_new_tokens, params, stop) if d)
        return self._collect(ids, max_new_tokens, params, stop)

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

    def stream_ids(self, ids: list[int], max_new_tokens: int = 128, *,
                   sampling: SamplingParams | None = None, stop: list[str] | None = None,
                   **settings) -> Iterator[tuple[str, list[int]]]:
        """(text delta, new token ids) as tokens are accepted, for prompt `ids`; stats of
        the run in `last_stats`. The caches are reused for a shared prefix, as in chat()."""
        return self._run(list(ids), max_new_tokens, _sampling(sampling, settings), stop)

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
    def _collect(self, ids, max_new_tokens, params, stop) -> GenerationOutput:
        out_ids: list[int] = []
        text = ""
        for delta, new in self._run(ids, max_new_tokens, params, stop):
            out_ids.extend(new)
            text += delta
        return GenerationOutput(text, out_ids, self.last_stats)

    def _run(self, ids: list[int], max_new_tokens: int, params: SamplingParams, stop
             ) -> Iterator[tuple[str, list[int]]]:
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model has none.")
        seed = params.seed
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


def _sampling(sampling: SamplingParams | None, settings: dict) -> SamplingParams:
    """`sampling` (default: the "default" preset) with the fields given as keywords."""
    if sampling is None:
        sampling = SAMPLING_PRESETS["default"]
    elif not isinstance(sampling, SamplingParams):
        raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}; "
                        "e.g. sampling=specdec.SamplingParams(temperature=0.7, top_p=0.9)")
    return sampling.replace(**settings) if settings else sampling


def check_same_vocabulary(target: LoadedModel, draft: LoadedModel, target_tokenizer) -> None:
    """Draft ids must mean the same tokens as the target's; padded sizes may differ."""
    if draft.tokenizer_source is not None and draft.tokenizer_source == target.tokenizer_source:
        return  # one tokenizer (a self-draft's is its target's): nothing to read again
    draft_tokenizer = load_tokenizer(draft.tokenizer_source, draft.config)
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


def _tokenizer_eos(tokenizer) -> set[int]:
    if tokenizer is None or tokenizer.eos_token_id is None:
        return set()
    return {int(tokenizer.eos_token_id)}
