"""Weights sources: where the decoder takes its tensors from.

The model asks a source for two things: `resident` (embeddings, final norm, lm_head by
their Hugging Face names) and `layers()`, one pass over the decoder layers in order,
each a dict of layer-relative names ("self_attn.q_proj.weight"). `ResidentWeights`
keeps everything in RAM; `offload.prefetch.StreamedWeights` streams layers from disk
with the same interface, so one model implementation serves both.
"""
from __future__ import annotations

import re
from typing import Iterator

import torch

from .config import ModelArgs

RESIDENT_NAMES = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class WeightsError(ValueError):
    """The checkpoint's tensors don't match its config."""


def expected_layer_names(args: ModelArgs) -> list[str]:
    names = [f"self_attn.{p}_proj.weight" for p in "qkvo"]
    names += [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    names += ["input_layernorm.weight", "post_attention_layernorm.weight"]
    if args.attention_bias:
        names += [f"self_attn.{p}_proj.bias" for p in "qkv"]
    if args.mlp_bias:
        names += [f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")]
    if args.qk_norm:
        names += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    return names


def split_state_dict(state: dict[str, torch.Tensor], args: ModelArgs, source: str = "checkpoint"
                     ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """HF state dict -> (resident tensors, one dict per layer); checks nothing is missing."""
    resident = {k: v for k, v in state.items() if k in RESIDENT_NAMES}
    layers: list[dict[str, torch.Tensor]] = [{} for _ in range(args.num_layers)]
    for name, tensor in state.items():
        m = _LAYER.match(name)
        if m and int(m.group(1)) < args.num_layers:
            layers[int(m.group(1))][m.group(2)] = tensor
    check_complete(resident, layers, args, source)
    return resident, layers


def check_complete(resident: dict, layers: list[dict], args: ModelArgs, source: str) -> None:
    needed = ["model.embed_tokens.weight", "model.norm.weight"]
    if not args.tie_word_embeddings:
        needed.append("lm_head.weight")
    missing = [n for n in needed if n not in resident]
    for i, layer in enumerate(layers):
        missing += [f"model.layers.{i}.{n}" for n in expected_layer_names(args) if n not in layer]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise WeightsError(f"{source}: tensors missing from the checkpoint: "
                           f"{', '.join(missing[:3])}{more}. The checkpoint does not match its "
                           "config.json or is incomplete; download it again.")
    embed = resident["model.embed_tokens.weight"]
    if tuple(embed.shape) != (args.vocab_size, args.hidden_size):
        raise WeightsError(f"{source}: embed_tokens has shape {tuple(embed.shape)}, config says "
                           f"({args.vocab_size}, {args.hidden_size}); checkpoint and config disagree.")


class ResidentWeights:
    """All weights in RAM, converted once to the compute dtype."""

    def __init__(self, resident: dict[str, torch.Tensor], layers: list[dict[str, torch.Tensor]],
                 dtype: torch.dtype):
        self.resident = {k: v.to(dtype) for k, v in resident.items()}
        self._layers = [{k: v.to(dtype) for k, v in layer.items()} for layer in layers]
        self.num_layers = len(layers)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], args: ModelArgs, dtype: torch.dtype,
                        source: str = "checkpoint") -> "ResidentWeights":
        resident, layers = split_state_dict(state, args, source)
        return cls(resident, layers, dtype)

    @property
    def nbytes(self) -> int:
        tensors = list(self.resident.values()) + [t for l in self._layers for t in l.values()]
        return sum(t.nbytes for t in tensors)

    def layers(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self._layers)

    def close(self) -> None:
        pass
