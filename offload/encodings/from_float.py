"""Float weights (safetensors, or a dequantized GGUF tensor) -> the encoding asked for at pack
time (`specdec pack --quant q4|q8|bf16`), with the documented fallback to bf16."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import q8
from .q4 import DEFAULT_GROUP, Q4Weight, UnsupportedShape, choose_group, part_specs
from .q8 import Q8Weight

QUANTIZERS = {"q4": Q4Weight, "q8": Q8Weight}
PLANES = {"q4": 1, "q8": 2}  # a q8 weight is two q4 planes (encodings/q8.py)
PREFERRED_GROUP = {"q4": DEFAULT_GROUP, "q8": q8.GROUP}  # what each quantize() picks first


@dataclass
class Encoded:
    value: object   # Q4Weight, Q8Weight or a float tensor (plain)
    encoding: str   # what `value` is: "q4", "q8", "float32", "bfloat16"
    note: str       # what was done, for the packer to print ("" when nothing worth saying)


def quantize_float(weight: torch.Tensor, encoding: str,
                   scale_dtype: torch.dtype = torch.bfloat16) -> Encoded:
    """A 2-D weight quantized to `encoding` (group chosen by q4.choose_group); 1-D tensors and
    shapes the int4 kernel cannot take stay bf16, with a note saying why."""
    if encoding not in QUANTIZERS:
        raise ValueError(f"unknown quantization {encoding!r}; choose one of "
                         f"{', '.join(QUANTIZERS)} (or bf16 to keep weights unquantized)")
    if weight.dim() != 2:
        return Encoded(weight.to(torch.bfloat16), "bfloat16", "")
    try:
        return Encoded(QUANTIZERS[encoding].quantize(weight, scale_dtype=scale_dtype), encoding, "")
    except UnsupportedShape as exc:
        return Encoded(weight.to(torch.bfloat16), "bfloat16", f"kept in bfloat16: {exc}")


def encoded_nbytes(shape: tuple[int, ...], encoding: str) -> int:
    """RAM a float weight of `shape` takes once `quantize_float` made it `encoding` (bf16
    scales), from the shape alone: what memory plans count before anything is quantized."""
    if encoding not in QUANTIZERS:
        raise ValueError(f"unknown quantization {encoding!r}; choose one of {', '.join(QUANTIZERS)}")
    shape = tuple(int(d) for d in shape)
    plain = 2 * math.prod(shape)  # kept in bf16
    if len(shape) != 2:
        return plain
    try:
        group = choose_group(shape, PREFERRED_GROUP[encoding])
    except UnsupportedShape:
        return plain
    specs = part_specs(shape, group, torch.bfloat16).values()
    per_plane = sum(math.prod(s["shape"]) * getattr(torch, s["dtype"]).itemsize for s in specs)
    return PLANES[encoding] * per_plane
