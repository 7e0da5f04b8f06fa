"""The drafter: the small model, its own KV cache and the vocabulary bridge to the target.

Strategies (specdec.speculate) decide what to draft; the drafter only runs the draft model
and keeps its cache. Its cache holds a prefix of the context, then whatever the strategy
fed after it (a chain's drafts, a tree's nodes); `keep` is the one way entries are kept or
dropped, for chain rollback and tree compaction alike.
"""
from __future__ import annotations

import torch

from .model import Transformer


class Drafter:
    def __init__(self, model: Transformer, max_context: int, target_vocab: int):
        self.model = model
        self.cache = model.new_cache(max_context)
        self.target_vocab = target_vocab

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

    def catch_up(self, context: list[int]) -> torch.Tensor:
        """Feed the context tokens the cache lacks (a new prompt, or the target's tokens of
        the last pass); return the draft's logits [vocab] after the last one."""
        feed = torch.tensor(context[self.cache.length:], dtype=torch.long)
        return self.forward(feed, num_logits=1)[-1]

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
