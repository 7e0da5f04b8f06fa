"""Weights sources: where the decoder takes its tensors from.

The model asks a source for two things: `resident` (embeddings, final norm, lm_head by
their Hugging Face names) and `layers()`, one pass over the decoder layers in order,
each a dict of layer-relative names ("self_attn.q_proj.weight"). `ResidentWeights`
keeps everything in RAM; `offload.prefetch.StreamedWeights` streams layers from disk
with the same interface, so one model implementation serves both.
"""
from __future__ import annotations

from typing import Iterator

import torch

from offload.shapes import ModelShape, split_layer_name

from .config import ModelArgs

# A draft may score only part of the vocabulary, the tokens its target actually writes
# (FR-Spec, Zhao et al. 2025): on a small draft the output layer over a 49K vocabulary
# costs as much as all its decoder layers. This integer tensor lists those ids in
# ascending order; the output layer has one row per id (taken from the embedding table
# when tied) and every other id gets probability 0, which rejection sampling handles
# exactly (the target's residual covers them).
OUTPUT_IDS = "lm_head.token_ids"
RESIDENT_NAMES = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", OUTPUT_IDS)


class WeightsError(ValueError):
    """The checkpoint's tensors don't match its config."""


def model_shape(args: ModelArgs) -> ModelShape:
    """The tensor names, shapes and parameter counts `args` implies (offload/shapes.py)."""
    return ModelShape(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                      intermediate_size=args.intermediate_size, num_layers=args.num_layers,
                      num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                      head_dim=args.head_dim, tie_word_embeddings=args.tie_word_embeddings,
                      attention_bias=args.attention_bias, mlp_bias=args.mlp_bias,
                      qk_norm=args.qk_norm, sandwich_norms=args.family == "gemma",
                      fused_projections=args.family == "phi3", num_experts=args.num_experts,
                      expert_intermediate_size=args.expert_intermediate_size,
                      shared_expert_intermediate_size=args.shared_expert_intermediate_size,
                      whole_qk_norm=args.whole_qk_norm)


def expected_shapes(args: ModelArgs) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(resident HF name -> shape, layer-relative name -> shape) that `args` implies."""
    shape = model_shape(args)
    return shape.resident_shapes(), shape.layer_shapes()


def split_state_dict(state: dict[str, torch.Tensor], args: ModelArgs, source: str = "checkpoint"
                     ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """HF state dict -> (resident tensors, one dict per layer); checks nothing is missing."""
    resident = {k: v for k, v in state.items() if k in RESIDENT_NAMES}
    split = {name: split_layer_name(name) for name in state}
    found = {where[0] for where in split.values() if where}
    check_layer_count(len(found) and max(found) + 1, args, source)
    layers: list[dict[str, torch.Tensor]] = [{} for _ in range(args.num_layers)]
    for name, tensor in state.items():
        if split[name]:
            index, relative = split[name]
            layers[index][relative] = tensor
    check_complete(resident, layers, args, source)
    return resident, layers


def check_layer_count(found: int, args: ModelArgs, source: str) -> None:
    if found != args.num_layers:
        raise WeightsError(f"{source}: the checkpoint has {found} decoder layers but its config "
                           f"says num_hidden_layers={args.num_layers}. Checkpoint and config "
                           "disagree; download the model again.")


def check_complete(resident: dict, layers: list[dict], args: ModelArgs, source: str) -> None:
    """Every tensor the config implies is there with the shape it implies, and no layer has
    weights the config does not use (they would be silently ignored: a wrong answer).
    Values may be tensors or anything with a `.shape` (the store's TensorMeta)."""
    needed = ["model.embed_tokens.weight", "model.norm.weight"]
    if not args.tie_word_embeddings:
        needed.append("lm_head.weight")
    missing = [n for n in needed if n not in resident]
    res_shapes, layer_shapes = expected_shapes(args)
    for i, layer in enumerate(layers):
        missing += [f"model.layers.{i}.{n}" for n in layer_shapes if n not in layer]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise WeightsError(f"{source}: tensors missing from the checkpoint: "
                           f"{', '.join(missing[:3])}{more}. The checkpoint does not match its "
                           "config.json or is incomplete; download it again.")
    if OUTPUT_IDS in resident:
        res_shapes["lm_head.weight"] = (_output_ids_count(resident[OUTPUT_IDS], args, source), args.hidden_size)
    embed = resident["model.embed_tokens.weight"]
    if tuple(embed.shape) != res_shapes["model.embed_tokens.weight"]:
        raise WeightsError(f"{source}: embed_tokens has shape {tuple(embed.shape)}, config says "
                           f"({args.vocab_size}, {args.hidden_size}); checkpoint and config disagree.")
    wrong = [(n, tuple(resident[n].shape), shape) for n, shape in res_shapes.items()
             if n in resident and tuple(resident[n].shape) != shape]
    for i, layer in enumerate(layers):
        wrong += [(f"model.layers.{i}.{n}", tuple(layer[n].shape), shape)
                  for n, shape in layer_shapes.items() if tuple(layer[n].shape) != shape]
        unused = sorted(n for n in layer if n not in layer_shapes and n.endswith((".weight", ".bias"))
                        and "rotary_emb" not in n)
        if unused:
            raise WeightsError(f"{source}: model.layers.{i} has tensors the config does not use "
                               f"({', '.join(unused[:3])}); ignoring them would give wrong "
                               "answers. Checkpoint and config disagree (e.g. attention_bias); "
                               "download the model again.")
    if wrong:
        name, got, want = wrong[0]
        raise WeightsError(f"{source}: {name} has shape {got} but config.json implies {want} "
                           f"({len(wrong)} tensors disagree). Checkpoint and config disagree; "
                           "download the model again.")


def _output_ids_count(ids, args: ModelArgs, source: str) -> int:
    if len(ids.shape) != 1 or not 1 <= ids.shape[0] <= args.vocab_size:
        raise WeightsError(f"{source}: {OUTPUT_IDS} has shape {tuple(ids.shape)}; it must list between "
                           f"1 and vocab_size={args.vocab_size} token ids. The checkpoint is damaged; "
                           "make or download it again.")
    return ids.shape[0]


def checked_output_ids(ids: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """A partial output vocabulary's ids as int64, or a WeightsError naming what is wrong."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise WeightsError(f"{OUTPUT_IDS} has dtype {ids.dtype}; it must hold integer token ids. "
                           "The checkpoint is damaged; make or download it again.")
    ids = ids.long()
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= args.vocab_size or bool((ids.diff() <= 0).any())):
        raise WeightsError(f"{OUTPUT_IDS} must list distinct token ids in [0, {args.vocab_size}) in "
                           "ascending order. The checkpoint is damaged; make or download it again.")
    return ids


def take_rows(table, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of a weight table as a plain tensor: a plain table's rows, or a quantized
    one's dequantized rows (offload/encodings `rows`, float32; the caller converts)."""
    if isinstance(table, torch.Tensor):
        return table.index_select(0, ids)
    return table.rows(ids)


def output_layer(resident: dict[str, torch.Tensor], args: ModelArgs
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(output weight [rows, hidden], the ids its rows score or None for the whole vocabulary).
    A tied partial vocabulary copies its rows out of the embedding table once, here."""
    embed = resident["model.embed_tokens.weight"]
    if OUTPUT_IDS not in resident:
        return resident.get("lm_head.weight", embed), None
    ids = checked_output_ids(resident[OUTPUT_IDS], args)
    head = resident.get("lm_head.weight")
    return (head if head is not None else take_rows(embed, ids).to(_plain_dtype(resident))), ids


def _plain_dtype(resident: dict) -> torch.dtype:
    norm = resident.get("model.norm.weight")
    return norm.dtype if isinstance(norm, torch.Tensor) else torch.bfloat16


def _to_dtype(value, dtype: torch.dtype):
    """Plain float tensors in the compute dtype; token ids stay integers and encoded weights
    (offload/encodings) stay as they are (they compute in their input's dtype)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


class ResidentWeights:
    """All weights in RAM, converted once to the compute dtype (encoded weights stay encoded)."""

    def __init__(self, resident: dict[str, torch.Tensor], layers: list[dict[str, torch.Tensor]],
                 dtype: torch.dtype):
        self.resident = {k: _to_dtype(v, dtype) for k, v in resident.items()}
        self._layers = [{k: _to_dtype(v, dtype) for k, v in layer.items()} for layer in layers]
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

    def layers(self, idle=None) -> Iterator[dict[str, torch.Tensor]]:
        """Every layer is in RAM: nothing to wait for, so `idle` work is never called."""
        return iter(self._layers)
