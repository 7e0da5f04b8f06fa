"""Batched decoding that stops computing a row once it has ended.

transformers' `generate` keeps every row of a left-padded batch in each step until the last
row ends: with replies of up to 512 tokens of which most end after 100-250, most of a
corpus batch's compute went to rows already finished. Here a row leaves the batch (and the
KV cache) at its end token, and padding columns that no remaining row needs are cut from
the cache, so a step costs what the rows still writing cost. The cache keeps room to grow:
transformers' DynamicLayer copies a layer's whole cache (torch.cat) for every new token,
which at a few hundred tokens costs as much as the step's matrix products.

Greedy takes the argmax. Sampling draws from specdec.sampling.probs_from_logits's
distribution (temperature, then top-p; top-k off) by a cheaper route: with 32 rows of a
49,152-token vocabulary, its full sort for top-p and torch.multinomial (an exponential draw
per vocabulary entry) cost more than twice the model's step. Draws use the global torch
generator, so torch.manual_seed fixes the output."""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

GENERATOR = "tools/draft/batch_decode.py: finished rows leave the batch"
ROOM = 128  # tokens a layer's buffers grow by: one reallocation per ROOM steps
CANDIDATES = 64  # top-p looks among this many likeliest tokens first (more if they fall short)


def left_pad(contexts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids right-aligned in one tensor, and the mask of real tokens."""
    width = max(map(len, contexts))
    ids = torch.full((len(contexts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, x in enumerate(contexts):
        ids[r, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[r, width - len(x):] = 1
    return ids, mask


def choose(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One next token per row of [rows, vocab] float logits; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    if top_p >= 1.0:
        return draw(probs)
    # the smallest set of likeliest tokens whose mass reaches top_p (a token stays if the mass
    # before it is below top_p) lies within the top k once those k hold top_p: no full sort
    k = min(CANDIDATES, probs.shape[-1])
    top, ids = probs.topk(k)
    while k < probs.shape[-1] and not bool((top.sum(-1) >= top_p).all()):
        k = min(4 * k, probs.shape[-1])
        top, ids = probs.topk(k)
    kept = top * ((top.cumsum(-1) - top) < top_p)
    return ids.gather(-1, draw(kept)[:, None])[:, 0]


def draw(weights: torch.Tensor) -> torch.Tensor:
    """One index per row, with probability proportional to the row's weights: one uniform
    number per row against the cumulative weights."""
    cdf = weights.cumsum(-1)
    u = torch.rand(len(cdf), 1) * cdf[:, -1:]
    picked = torch.searchsorted(cdf, u, right=True)[:, 0]
    # u rounding up to the total would pick past the last token with weight
    last = cdf.shape[-1] - 1 - (weights > 0).flip(-1).int().argmax(-1)
    return torch.minimum(picked, last)


class RoomyLayer(DynamicLayer):
    """A full-attention layer cache whose keys and values are views into buffers with room
    for more tokens: a step writes its token in place."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            # empty, shaped like the cache, so that _move can make the first buffers
            self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
            self._k = self._v = None
        n = self.get_seq_length()
        m = n + key_states.shape[-2]
        if self._k is None or m > self._k.shape[-2]:
            self._move(torch.arange(key_states.shape[0]), 0, m + ROOM)
        self._k[..., n:m, :], self._v[..., n:m, :] = key_states, value_states
        self.keys, self.values = self._k[..., :m, :], self._v[..., :m, :]
        return self.keys, self.values

    def keep(self, rows: torch.Tensor, start: int) -> None:
        """Keep only these batch rows and the columns from `start` on."""
        self._move(rows, start, self.get_seq_length() - start + ROOM)

    def _move(self, rows: torch.Tensor, start: int, capacity: int) -> None:
        # new buffers holding the kept part of the cache, with room after it
        old_k, old_v = self.keys[rows, :, start:], self.values[rows, :, start:]
        shape = (len(rows), old_k.shape[1], capacity, old_k.shape[-1])
        self._k = torch.empty(shape, dtype=old_k.dtype)
        self._v = torch.empty(shape, dtype=old_v.dtype)
        n = old_k.shape[-2]
        self._k[..., :n, :], self._v[..., :n, :] = old_k, old_v
        self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]


def roomy_cache(config) -> Cache:
    """A cache of RoomyLayers for a model whose layers all attend to the whole context."""
    types = getattr(config, "layer_types", None) or ["full_attention"]
    if set(types) != {"full_attention"} or getattr(config, "sliding_window", None):
        raise ValueError(f"batch_decode handles full-attention models only, not {sorted(set(types))}")
    return Cache(layers=[RoomyLayer() for _ in range(config.num_hidden_layers)])


class LiveBatch:
    """The rows still decoding: which context each is, its next position, the attention mask
    over the cache's columns, and the cache itself."""

    def __init__(self, mask: torch.Tensor, cache: Cache):
        self.rows = torch.arange(len(mask))
        self.mask, self.cache = mask, cache
        # each row's positions count its own tokens from 0 (left padding takes none)
        self.next_pos = mask.sum(-1)

    def keep(self, kept: torch.Tensor) -> None:
        """Drop every row but `kept` (indices into the live rows) from the batch and cache."""
        self.rows, self.next_pos, self.mask = self.rows[kept], self.next_pos[kept], self.mask[kept]
        # columns left of every remaining row's context are padding for all of them: attention
        # over them is wasted, so they go from the mask and from every layer's keys and values
        start = int(self.mask.any(0).nonzero()[0])
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keep(kept, start)

    def step_inputs(self, tokens: torch.Tensor) -> dict:
        """Model arguments for one new token per live row (advances positions and the mask)."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        pos = self.next_pos[:, None]
        self.next_pos = self.next_pos + 1
        return dict(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=pos,
                    cache=self.cache, use_cache=True)


def decode_batch(model, contexts: list[list[int]], max_new: int, end: int,
                 temperature: float = 0.0, top_p: float = 1.0) -> list[tuple[list[int], bool]]:
    """Up to max_new new tokens per context, each row stopping after `end`; with whether it
    ended. Temperature 0 is greedy."""
    out: list[list[int]] = [[] for _ in contexts]
    if max_new <= 0 or not contexts:  # none: a batch whose every reply ran out of tokens
        return [(o, False) for o in out]
    ids, mask = left_pad(contexts, end)
    batch = LiveBatch(mask, roomy_cache(model.config))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=batch.cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        for step in range(max_new):
            tokens = choose(logits.float(), temperature, top_p)
            for r, t in zip(batch.rows.tolist(), tokens.tolist()):
                out[r].append(t)
            going = (tokens != end).nonzero()[:, 0]
            if step == max_new - 1 or not len(going):
                break
            if len(going) < len(tokens):
                batch.keep(going)
                tokens = tokens[going]
            logits = model(**batch.step_inputs(tokens)).logits[:, -1]
    return [(o, o[-1] == end) for o in out]
