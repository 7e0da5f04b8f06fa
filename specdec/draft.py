"""The drafter: the small model, its own KV cache and the vocabulary bridge to the target.

Strategies (specdec.speculate) decide what to draft; the drafter only runs the draft model
and keeps its cache. Its cache holds a prefix of the context, then whatever the strategy
fed after it (a chain's drafts, a tree's nodes); `keep` is the one way entries are kept or
dropped, for chain rollback and tree compaction alike.
"""
from __future__ import annotations

import time

import torch

from .model import LayerSteps, Transformer

# A catch-up of at most this many tokens is a decode step (the target's token after a pass,
# or the last draft and the bonus token): the forward that yields the next draft, part of
# drafting. A longer one is the draft reading context it missed: a prompt, or the tokens of
# plain passes. Its cost is per catch-up, not per drafted token, so it is counted apart.
DECODE_STEP = 2


class Drafter:
    def __init__(self, model: Transformer, max_context: int, target_vocab: int):
        self.model = model
        self.cache = model.new_cache(max_context)
        self.target_vocab = target_vocab
        # Catch-ups longer than a decode step, summed: strategies report their change per
        # pass (Outcome.counters), so "drafting ms per pass" can be told apart from the
        # draft reading a prompt or the tokens of plain passes.
        self.counters = {"draft_catch_up_tokens": 0.0, "draft_catch_up_seconds": 0.0,
                         "draft_catch_ups": 0.0}

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, num_logits: int | None = None) -> torch.Tensor:
        """The draft's logits for `tokens` fed after its cache (positions: consecutive
        unless given; mask: causal unless given, see Transformer.forward)."""
        # A draft whose (padded) vocabulary is smaller than the target's cannot embed the
        # rare target ids beyond it: feed it its last id instead. The draft only guesses
        # and the target verifies, so the output stays exact.
        tokens = tokens.reshape(-1).clamp(max=self.model.args.vocab_size - 1)
        if positions is None:
            positions = self.cache.next_positions(tokens.numel())
        return self.model.forward(tokens, positions, self.cache, mask=mask, num_logits=num_logits)

    def forward_steps(self, tokens: torch.Tensor, positions: torch.Tensor,
                      mask: torch.Tensor | None = None) -> LayerSteps:
        """forward() one draft layer per `.step()` call (model.LayerSteps): for drafting in the
        target's waits, where a whole forward would hold a layer that arrived meanwhile up."""
        tokens = tokens.reshape(-1).clamp(max=self.model.args.vocab_size - 1)  # as in forward
        return self.model.forward_steps(tokens, positions, self.cache, mask=mask)

    def catch_up(self, context: list[int]) -> torch.Tensor:
        """Feed the context tokens the cache lacks (a new prompt, or the target's tokens of
        the last pass); return the draft's logits [vocab] after the last one."""
        feed = torch.tensor(context[self.cache.length:], dtype=torch.long)
        started = time.perf_counter()
        logits = self.forward(feed, num_logits=1)[-1]
        if feed.numel() > DECODE_STEP:
            self.counters["draft_catch_ups"] += 1
            self.counters["draft_catch_up_tokens"] += feed.numel()
            self.counters["draft_catch_up_seconds"] += time.perf_counter() - started
        return logits

    def counters_since(self, before: dict[str, float]) -> dict[str, float]:
        """The change of `counters` since `before` (a copy taken earlier), zeros included:
        a strategy that reports them reports every key on every pass."""
        return {k: v - before.get(k, 0.0) for k, v in self.counters.items()}

    def keep(self, base: int, slots: torch.Tensor | None = None) -> None:
        """Keep the first `base` cached entries (fewer if the cache holds fewer) and then
        only `slots` (absolute, ascending, past `base`), moved up to follow them."""
        base = min(base, self.cache.length)
        if slots is None or slots.numel() == 0:
            self.cache.crop(base)
        else:
            self.cache.keep(base, slots)

    def align(self, logits: torch.Tensor) -> torch.Tensor:
        """The draft's logits over the target's vocabulary: vocabularies may be padded to
        different sizes, and ids the target lacks get no mass."""
        n = self.target_vocab
        if logits.numel() >= n:
            return logits[:n]
        pad = torch.full((n - logits.numel(),), float("-inf"))
        return torch.cat([logits, pad])
