"""What packing does with each GGUF tensor type, and the error a conversion introduces.

  kept exactly   Q4_0, Q4_1, Q4_K -> q4;  Q8_0, Q5_0, Q5_1, Q5_K -> q8 (two int4 planes carry
                 any code of up to 8 bits under one affine per 32 weights; Q5_K's float32 result
                 may differ from gguf-py's in the last bit or two, see q8)
  converted      through gguf-py's float32 dequantization, then round-to-nearest, group 32
                 (the GGUF block granularity: every GGUF weight has K % 32 == 0):
                 -> q8  Q6_K, IQ4_NL, IQ4_XS, MXFP4 (4.25-6.6 bits: q8 keeps them within a few
                        hundredths of their own step; q4 would throw away most of their precision)
                 -> q4  Q2_K, Q3_K, IQ1_*, IQ2_*, IQ3_*, TQ1_0, TQ2_0 (below 4 bits: q4 costs the
                        fewest bytes that still hold them; q8 would stream 3-5x the file's bytes)
  plain          F32 -> float32; F16, BF16 -> bf16 (fp16 arithmetic is ~100x slower here)
Anything else (I8..I64, F64, Q8_1, Q8_K, NVFP4, Q1_0: not used for model weights, or too new to
be tested here) is `UnsupportedGGUFType`, naming what is supported.

A quantized 2-D tensor whose shape the int4 kernel cannot take (N % 16 != 0) is kept as bf16 of
its float32 dequantization (`note` says so). 1-D tensors (norms, biases) are always plain.
Conversion error, max / mean in the source type's own steps (`conversion_error`; random blocks,
bf16 scales; bounds checked in tests/test_quant_encodings.py, CONVERSION_ERROR_BOUNDS):
  -> q8  Q6_K 0.19 / 0.065   IQ4_NL 0.036 / 0.006   IQ4_XS 0.037 / 0.006   MXFP4 0.040 / 0.017
  -> q4  Q2_K 0.10 / 0.032   Q3_K 0.23 / 0.11   IQ1_S 0.061 / 0.025   IQ1_M 0.079 / 0.035
         IQ2_XXS 0.061 / 0.020   IQ2_XS 0.10 / 0.036   IQ2_S 0.10 / 0.036
         IQ3_XXS 0.23 / 0.070   IQ3_S 0.23 / 0.063   TQ1_0 0.068 / 0.023   TQ2_0 0.011 / 0.002
(Exactly kept types with bf16 scales: <= 0.05 step + 2^-8 of the group's largest weight.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import gguf_blocks
from .from_float import Encoded
from .q4 import Q4Weight, UnsupportedShape
from .q8 import Q8Weight

EXACT = {t: encoding for encoding, kept in gguf_blocks.KEPT_AS.items() for t in kept}
CONVERTED = {**{t: "q8" for t in ("Q6_K", "IQ4_NL", "IQ4_XS", "MXFP4")},
             **{t: "q4" for t in ("Q2_K", "Q3_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
                                  "IQ3_XXS", "IQ3_S", "TQ1_0", "TQ2_0")}}
PLAIN = {"F32": "float32", "F16": "bfloat16", "BF16": "bfloat16"}
ENCODERS = {"q4": Q4Weight, "q8": Q8Weight}
CONVERT_GROUP = 32

# Nominal bits of each converted type's codes, used only to express errors in its own steps.
NOMINAL_BITS = {"Q6_K": 6, "IQ4_NL": 4, "IQ4_XS": 4, "MXFP4": 4, "Q2_K": 2, "Q3_K": 3,
                "IQ1_S": 1.5, "IQ1_M": 1.75, "IQ2_XXS": 2, "IQ2_XS": 2, "IQ2_S": 2,
                "IQ3_XXS": 3, "IQ3_S": 3, "TQ1_0": 1.6, "TQ2_0": 2}


class UnsupportedGGUFType(ValueError):
    """A GGUF tensor type packing does not handle."""


def supported_types() -> list[str]:
    return sorted({**EXACT, **CONVERTED, **PLAIN})


@dataclass(frozen=True)
class TypePlan:
    gguf_type: str
    encoding: str   # "q4", "q8", "float32" or "bfloat16"
    exact: bool     # the stored weights equal gguf-py's dequantization (float32 scales)


def plan_for(gguf_type: str) -> TypePlan:
    if gguf_type in EXACT:
        return TypePlan(gguf_type, EXACT[gguf_type], True)
    if gguf_type in CONVERTED:
        return TypePlan(gguf_type, CONVERTED[gguf_type], False)
    if gguf_type in PLAIN:
        return TypePlan(gguf_type, PLAIN[gguf_type], gguf_type != "F16")
    raise UnsupportedGGUFType(f"GGUF tensor type {gguf_type} is not supported; supported: "
                              f"{', '.join(supported_types())}. Convert the file with llama.cpp's "
                              f"llama-quantize to one of those.")


def dequantize_raw(raw: np.ndarray, gguf_type: str, shape: tuple[int, ...]) -> torch.Tensor:
    """gguf-py's own float32 dequantization, in torch order (the reference)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    values = dequantize(np.asarray(raw), GGMLQuantizationType[gguf_type])
    return torch.from_numpy(np.require(values, np.float32, ["C", "W"])).reshape(shape)


def unpermute_qk_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order undoing llama.cpp's rotary permutation of attn_q / attn_k (as transformers'
    _reverse_permute_weights does, with n_head = the kv heads for attn_k): hf_rows =
    gguf_rows[order]. A row permutation moves whole rows of codes and scales: exact."""
    rows = torch.arange(n_rows)
    return rows.view(n_head, n_rows // n_head // 2, 2).transpose(1, 2).reshape(n_rows)


def encode_tensor(raw: np.ndarray, gguf_type: str, shape: tuple[int, ...],
                  scale_dtype: torch.dtype = torch.bfloat16,
                  row_order: torch.Tensor | None = None) -> Encoded:
    """Raw GGUF tensor bytes (as GGUFReader gives them) of torch shape `shape` -> stored form;
    `row_order` reorders the rows of a 2-D tensor first (see unpermute_qk_rows)."""
    plan = plan_for(gguf_type)
    shape = tuple(int(s) for s in shape)
    if row_order is not None:
        raw = reorder_rows(raw, gguf_type, shape, row_order)
    if plan.encoding in ("float32", "bfloat16") or len(shape) != 2:
        value = dequantize_raw(raw, gguf_type, shape)
        dtype = torch.float32 if plan.encoding == "float32" else torch.bfloat16
        return Encoded(value.to(dtype), str(dtype).removeprefix("torch."),
                       "" if gguf_type in ("F32", "BF16") else f"{gguf_type} -> {dtype}")
    encoder = ENCODERS[plan.encoding]
    try:
        if plan.exact:
            return Encoded(encoder.from_gguf(raw, gguf_type, shape, scale_dtype), plan.encoding, "")
        reference = dequantize_raw(raw, gguf_type, shape)
        value = encoder.quantize(reference, CONVERT_GROUP, scale_dtype)
        err = conversion_error(reference, value.dequantize(), gguf_type)
        return Encoded(value, plan.encoding,
                       f"{gguf_type} -> {plan.encoding} (group {CONVERT_GROUP}): error max "
                       f"{err['max']:.3f} / mean {err['mean']:.3f} of a {gguf_type} step")
    except UnsupportedShape as exc:
        return Encoded(dequantize_raw(raw, gguf_type, shape).to(torch.bfloat16), "bfloat16",
                       f"{gguf_type} -> bfloat16: {exc}")


def reorder_rows(raw: np.ndarray, gguf_type: str, shape: tuple[int, ...],
                 row_order: torch.Tensor) -> np.ndarray:
    """Rows of a GGUF tensor's raw bytes in a new order (a GGUF row is whole blocks)."""
    if len(shape) != 2 or len(row_order) != shape[0]:
        raise ValueError(f"row order of length {len(row_order)} for a tensor of shape {shape}")
    rows = np.ascontiguousarray(raw).view(np.uint8).reshape(shape[0], -1)
    return rows[np.asarray(row_order)]


def conversion_error(reference: torch.Tensor, converted: torch.Tensor, gguf_type: str,
                     group: int = CONVERT_GROUP) -> dict:
    """Max and mean |converted - reference| in units of the source's step, estimated per group
    of 32 as (max - min) / (2^bits - 1) with the type's nominal bits (a non-uniform codebook has
    no single step; this is its average spacing)."""
    bits = NOMINAL_BITS.get(gguf_type, 8)
    ref = reference.float().reshape(-1, group)
    step = (ref.amax(1) - ref.amin(1)) / (2 ** bits - 1)
    err = (converted.float().reshape(-1, group) - ref).abs()
    rel = err / step.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
    rel = rel[step > 0]
    return {"max": float(rel.max()) if rel.numel() else 0.0,
            "mean": float(rel.mean()) if rel.numel() else 0.0}
