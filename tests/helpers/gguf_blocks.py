"""GGUF quantized blocks for the encoding and store tests: gguf-py's own quantizer's output
where it has one, random bytes with sane float16 scales otherwise (K-quants, IQ*, TQ*, MXFP4:
gguf-py can only dequantize those); and the measured bounds on converting the latter."""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as GT
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quantize as gguf_quantize

QUANTIZABLE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
# Byte offsets of each block's float16 scale fields (ggml's block structs).
F16_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,), "Q6_K": (208,),
              "IQ4_NL": (0,), "IQ4_XS": (0,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,),
              "IQ3_XXS": (0,), "IQ3_S": (0,), "IQ1_S": (0,), "TQ1_0": (52,), "TQ2_0": (64,)}
# Measured conversion error (max, mean) in the source's steps (gguf_types.conversion_error),
# seed 0, bf16 scales, [48, 1024]; bounds are the measurement plus ~25%, rounded up.
CONVERSION_ERROR_BOUNDS = {  # measured max / mean in the comments
    "Q6_K": (0.24, 0.09),     # 0.187 / 0.065 -> q8
    "IQ4_NL": (0.05, 0.01),   # 0.036 / 0.006 -> q8
    "IQ4_XS": (0.05, 0.01),   # 0.037 / 0.006 -> q8
    "MXFP4": (0.05, 0.025),   # 0.040 / 0.017 -> q8
    "Q2_K": (0.13, 0.04),     # 0.100 / 0.032 -> q4
    "Q3_K": (0.30, 0.14),     # 0.234 / 0.109 -> q4
    "IQ1_S": (0.08, 0.035),   # 0.061 / 0.025 -> q4
    "IQ1_M": (0.10, 0.045),   # 0.079 / 0.035 -> q4
    "IQ2_XXS": (0.08, 0.03),  # 0.061 / 0.020 -> q4
    "IQ2_XS": (0.13, 0.05),   # 0.100 / 0.036 -> q4
    "IQ2_S": (0.13, 0.05),    # 0.100 / 0.036 -> q4
    "IQ3_XXS": (0.30, 0.09),  # 0.234 / 0.070 -> q4
    "IQ3_S": (0.30, 0.08),    # 0.234 / 0.063 -> q4
    "TQ1_0": (0.09, 0.03),    # 0.068 / 0.023 -> q4
    "TQ2_0": (0.015, 0.003),  # 0.011 / 0.002 -> q4
}


def gguf_blocks_for(qtype: str, n_rows: int = 48, k: int = 512, seed: int = 0) -> np.ndarray:
    """Raw blocks [n_rows, bytes per row] of a GGUF type for an [n_rows, k] weight."""
    rng = np.random.default_rng(seed)
    if qtype in QUANTIZABLE:
        weight = (rng.standard_normal((n_rows, k)) * 0.05).astype(np.float32)
        return gguf_quantize(weight, GT[qtype])
    per_block, block_bytes = GGML_QUANT_SIZES[GT[qtype]]
    n_blocks = n_rows * k // per_block
    raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for offset in F16_FIELDS.get(qtype, ()):
        d = rng.uniform(1e-3, 1e-2, n_blocks).astype(np.float16)
        raw[:, offset:offset + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    if qtype == "IQ1_M":  # d is spread over the top nibbles of the 4 trailing uint16 scales
        raw[:, 55] = (raw[:, 55] & 0x0F) | 0x20
    if qtype == "MXFP4":  # e8m0 exponent byte: scales 2^-9..2^-3
        raw[:, 0] = rng.integers(118, 125, n_blocks)
    return raw.reshape(n_rows, -1)
