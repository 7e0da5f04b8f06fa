"""A SYNTHETIC mixture-of-experts workload of a real MoE's shape whose answers are known:
SmolLM2-135M-Instruct inflated (tools/inflate/builder.py) into a Qwen3-30B-A3B-shaped model
(48 layers, hidden 2048, 128 experts of width 768, 8 routed per token), written as a GGUF that
llama.cpp and specdec both read (a llama model with experts: llama.cpp's Mixtral layout).

How the answers stay SmolLM2's: the dense inflation gives each layer one MLP of width 2 x 768
(SmolLM2's own 1536 units). Expert 2p holds its first 768 units and expert 2p+1 the other 768,
both with down_proj doubled (a power of two: exact in the Q4_1/Q8_0 scales). The router's rows
come in identical pairs, so experts 2p and 2p+1 always tie: the top 8 of 128 are 4 whole pairs
with equal weights per pair, renormalised to sum to one (Mixtral always renormalises). The
layer's output is then sum_p w_p * 2(A + B) with sum_p 2 w_p = 1, that is A + B: the dense MLP,
whichever pairs the router picked (exact up to float rounding). The router rows are random
over the real hidden dims (seeded per layer) and read the normed hidden state, so which experts
are read depends on the text as a trained router's does (routing statistics:
`python -m tools.inflate moe-routing`); it is not a trained router's routing, and the paired
experts make each token's 8 experts 4 distinct routing decisions.

Qwen3-MoE itself normalises q and k per head, which SmolLM2's layers cannot be embedded into;
the llama/Mixtral family has the same tensors otherwise. The experts (97% of the file) have the
30B-A3B's sizes; attention is 32 heads of 64 on 8 KV heads (the inflater keeps heads x head_dim
= hidden), so its q and o projections are half the 30B-A3B's (32 heads of 128). At SmolLM2's
Q4_1 the file is 18.7 GB: 18.1 GB of experts (2.95 MB each), 12 MB of dense part per layer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .builder import (InflateError, Shape, _copy_metadata, _gguf_plan, _gguf_tensors,
                      open_gguf_source, plan_layout, write_planned_gguf)


@dataclass(frozen=True)
class MoeShape:
    dense: Shape  # the inflated dense model; its intermediate is split into two experts' widths
    experts: int
    routed: int

    @property
    def expert_width(self) -> int:
        return self.dense.intermediate // 2


MOE_SHAPES = {
    "inflated-30b-a3b": MoeShape(Shape(hidden=2048, layers=48, heads=32, kv_heads=8, intermediate=1536),
                                 experts=128, routed=8),
    # The same experts' width and routing on a smaller frame (2.9 GB): quick runs under a 1.5 GB cap.
    "inflated-moe-small": MoeShape(Shape(hidden=1024, layers=30, heads=16, kv_heads=4, intermediate=1536),
                                   experts=64, routed=8),
}
ROUTER_STD = 1.0
PARTS = {"ffn_gate": "ffn_gate_exps", "ffn_up": "ffn_up_exps", "ffn_down": "ffn_down_exps"}


def check_shape(shape: MoeShape, source_intermediate: int) -> None:
    if shape.experts % 2 or shape.routed % 2:
        raise InflateError(f"experts ({shape.experts}) and routed ({shape.routed}) must be even: "
                           "experts come in pairs that hold the two halves of one MLP.")
    if shape.dense.intermediate != source_intermediate:
        raise InflateError(f"the dense intermediate {shape.dense.intermediate} must be the source's "
                           f"{source_intermediate}: each pair of experts splits the source's MLP.")
    if shape.expert_width % 32:
        raise InflateError(f"expert width {shape.expert_width} must be a multiple of 32 (GGUF blocks).")


def moe_plan(dense_plan, shape: MoeShape):
    """The dense GGUF plan with each layer's MLP replaced by router + merged experts."""
    import gguf

    for name, byte_shape, qtype, nbytes in dense_plan:
        part = name.split(".")[2] if name.startswith("blk.") else None
        if part not in PARTS:
            yield name, byte_shape, qtype, nbytes
            continue
        layer = name.split(".")[1]
        if part == "ffn_gate":
            h = shape.dense.hidden
            yield f"blk.{layer}.ffn_gate_inp.weight", (shape.experts, h), gguf.GGMLQuantizationType.F32, 4 * shape.experts * h
        rows, row_bytes = byte_shape
        if part == "ffn_down":  # [hidden, intermediate]: each expert takes half the columns
            expert = (rows, row_bytes // 2)
        else:  # [intermediate, hidden]: half the rows
            expert = (rows // 2, row_bytes)
        yield (f"blk.{layer}.{PARTS[part]}.weight", (shape.experts, *expert), qtype,
               shape.experts * expert[0] * expert[1])


def moe_tensors(dense_plan, dense_tensors, shape: MoeShape, layout, seed: int):
    """The data of moe_plan's tensors, from the dense inflation's, one at a time."""
    rng = np.random.default_rng(seed + 1)
    for (name, _, qtype, _), data in zip(dense_plan, dense_tensors):
        part = name.split(".")[2] if name.startswith("blk.") else None
        if part not in PARTS:
            yield data
            continue
        if part == "ffn_gate":
            yield router(rng, shape, layout)
        halves = _halves(data, part, qtype)
        yield np.ascontiguousarray(np.stack([halves[e % 2] for e in range(shape.experts)]))


def router(rng: np.random.Generator, shape: MoeShape, layout) -> np.ndarray:
    """[experts, hidden] float32: random rows over the real hidden dims, in identical pairs."""
    rows = np.zeros((shape.experts // 2, shape.dense.hidden), np.float32)
    real = layout.hidden.src >= 0
    rows[:, real] = rng.standard_normal((rows.shape[0], int(real.sum()))).astype(np.float32) * ROUTER_STD
    return np.repeat(rows, 2, axis=0)


def _halves(data: np.ndarray, part: str, qtype) -> tuple[np.ndarray, np.ndarray]:
    """(first 768 units, the other 768) of a dense MLP tensor's bytes; down_proj doubled."""
    if part != "ffn_down":
        n = data.shape[0] // 2
        return data[:n], data[n:]
    a, b = np.split(data, 2, axis=1)
    return double_blocks(a, qtype), double_blocks(b, qtype)


def double_blocks(data: np.ndarray, qtype) -> np.ndarray:
    """Q4_0/Q4_1/Q8_0 rows (bytes) with every value doubled: the fp16 scale (and Q4_1's min)
    times two, exact in float16 for the sizes these weights have."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    _, size = GGML_QUANT_SIZES[qtype]
    out = np.array(data, copy=True).reshape(data.shape[0], -1, size)
    fields = (0, 2) if qtype == Q.Q4_1 else (0,)
    for start in fields:
        half = np.ascontiguousarray(out[:, :, start:start + 2]).view(np.float16)
        doubled = (half.astype(np.float32) * 2).astype(np.float16)
        if not np.all(np.isfinite(doubled)):
            raise InflateError("doubling a down_proj scale overflows float16")
        out[:, :, start:start + 2] = doubled.view(np.uint8).reshape(out[:, :, start:start + 2].shape)
    return out.reshape(data.shape)


def write_moe_gguf(src_gguf: str | Path | None, shape: MoeShape, out_path: str | Path,
                   noise_std: float = 0.02, seed: int = 0, keep_free: int = 1 << 30,
                   progress: bool = True) -> Path:
    """Write the synthetic MoE GGUF (see the module's docstring) to `out_path`, atomically."""
    out_path, reader, tensors, cfg = open_gguf_source(src_gguf, out_path)
    check_shape(shape, cfg["intermediate_size"])
    layout = plan_layout(cfg, shape.dense)
    dense_plan = list(_gguf_plan(tensors, layout))
    data = moe_tensors(dense_plan, _gguf_tensors(tensors, layout, noise_std, seed), shape, layout, seed)
    return write_planned_gguf(out_path, list(moe_plan(dense_plan, shape)), data,
                              lambda writer: _moe_metadata(reader, writer, layout, shape), keep_free, progress)


def _moe_metadata(reader, writer, layout, shape: MoeShape) -> None:
    expert_shape = dataclasses.replace(shape.dense, intermediate=shape.expert_width)
    _copy_metadata(reader, writer, dataclasses.replace(layout, shape=expert_shape))
    writer.add_expert_count(shape.experts)
    writer.add_expert_used_count(shape.routed)
    writer.add_string("general.synthetic_moe", (
        f"SYNTHETIC MIXTURE OF EXPERTS: {shape.experts} experts of width {shape.expert_width}, "
        f"{shape.routed} routed, paired halves of one inflated dense MLP (tools/inflate/moe.py): "
        "the real I/O and compute of this shape, the answers of the inflated dense model."))
