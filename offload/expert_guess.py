"""Guesses of a mixture-of-experts layer's experts, made before its router runs, so that their
reads can start early (offload/expert_stream.py reads them into buffers the current layer does
not use). A guess decides only which bytes are read when: the layer still asks for what its
router chose, and a wrong guess costs a read and a buffer, never a different output.

- `PreviousPass` ("previous-pass"): the experts the layer routed the previous pass's last token
  to. Neighbouring tokens share experts, so it needs nothing but the last routing.
- `NextRouter` ("next-router"): the next layer's router applied to the current layer's residual
  stream after its attention, normed with the next layer's post-attention norm: the next
  layer's router input less one attention and one MLP update. The model computes it
  (specdec/moe.py, `read_ahead`: the first half of each token's top k, the ranks most often
  right) once the current layer's own reads are submitted; this object
  only keeps every routed layer's router and that norm resident. They arrive with their layers
  (the first pass brings them; a pinned layer's are its own tensors, a streamed layer's are
  copied out of its ring slot), so the first pass after loading makes no guess.
"""
from __future__ import annotations

import torch

from .expert_names import ROUTER

POST_ATTENTION_NORM = "post_attention_layernorm.weight"
GUESSES = ("previous-pass", "next-router")
DEFAULT_GUESS = "next-router"  # guessed right more often (docs/moe.md, guess accuracy)


class PreviousPass:
    """Guess a layer's experts: those its last token was routed to in the previous pass."""

    def __init__(self):
        self.last: dict[int, list[int]] = {}

    def record(self, layer: int, last: list[int]) -> None:
        self.last[layer] = list(last)

    def guess(self, layer: int) -> list[int]:
        return self.last.get(layer, [])

    def saw_layer(self, layer: int, views: dict, streamed: bool) -> None:
        pass

    def next_router(self, layer: int):
        return None


class NextRouter:
    """Keeps (post-attention norm, router) of every layer it is shown; the model applies layer
    i+1's to layer i's residual and hands the ranked experts to the reader (read_ahead)."""

    def __init__(self):
        self.routers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(self, layer: int, last: list[int]) -> None:
        pass

    def guess(self, layer: int) -> list[int]:
        return []  # the model brings this guess itself, after the current layer's router ran

    def saw_layer(self, layer: int, views: dict, streamed: bool) -> None:
        """A layer's tensors as the model gets them; a streamed layer's are copied (its ring
        slot is reused), a pinned layer's kept as they are (they stay in RAM)."""
        if layer in self.routers or ROUTER not in views or POST_ATTENTION_NORM not in views:
            return
        norm, router = views[POST_ATTENTION_NORM], views[ROUTER]
        if streamed:
            norm, router = norm.clone(), router.clone()
        self.routers[layer] = (norm, router)

    def next_router(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(post-attention norm weight, router weight) of layer+1, once that layer was seen."""
        return self.routers.get(layer + 1)


def make_guess(name: str | bool | None):
    """The guess named by the expert_prefetch setting (None / False: no prefetch; True: the default)."""
    if name is None or name is False:
        return None
    if name is True:
        name = DEFAULT_GUESS
    if name == "previous-pass":
        return PreviousPass()
    if name == "next-router":
        return NextRouter()
    raise ValueError(f"expert_prefetch must be one of {GUESSES} (or True for {DEFAULT_GUESS!r}, "
                     f"False for none), got {name!r}")


def router_copy_nbytes(store, layers, itemsize: int) -> int:
    """RAM the next-router guess adds: the router and post-attention norm of each streamed
    layer, at `itemsize` bytes per element (the compute dtype's)."""
    total = 0
    for i in layers:
        tensors = store.layer_tensors(i)
        for name in (ROUTER, POST_ATTENTION_NORM):
            if name in tensors:
                total += _numel(tensors[name].shape) * itemsize
    return total


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
