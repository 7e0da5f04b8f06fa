"""Float weights (safetensors, or a dequantized GGUF tensor) -> the encoding asked for at pack
time (`specdec pack --quant q4|q8|bf16`), with the documented fallback to bf16."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .q4 import Q4Weight, UnsupportedShape
from .q8 import Q8Weight

QUANTIZERS = {"q4": Q4Weight, "q8": Q8Weight}


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
