"""q8: 8-bit weights as two 4-bit planes on torch's CPU int4 kernel.

An 8-bit code c in 0..255 with a per-group affine w = (c - 8) * s + z is split as c = 16*hi + lo:
  hi plane: (hi - 8) * 16s + 0
  lo plane: (lo - 8) * s + (z + 128s)
and the two planes' sum is w exactly (in float32; see gguf_blocks for Q8_0's s and z). Each plane
is a `Q4Weight`, so the bytes, the layout check, zero-copy reads and repacking are q4's.

Why this and not the alternatives (measured on this machine, 4096x11008, one thread, shared CPU:
indicative; time relative to bf16 F.linear at n = 1 / 8 / 16 / 32 / 64 tokens):
  two int4 planes (this)           0.49 / 2.2 / 3.0 / 4.4 / 3.9   exact for GGUF Q8_0
  aten._weight_int8pack_mm          0.54 / 1.8 / 2.3 / 3.2 / 2.8   per-row scales only
  dequantize to bf16 + F.linear     30 / 24 / 19 / 12 / 6
`_weight_int8pack_mm` is ~1.2-1.4x faster at n >= 8 and stores 8 bits per weight instead of 9-10,
but takes one scale per output row: GGUF Q8_0 (a scale per 32 weights) would have to be
requantized, i.e. the user would not get the model they chose, and it crashed for K % 8 != 0.
Dequantizing per pass is 6-30x slower than bf16 and out. Two planes keep Q8_0 (and, through
the same affine, any 5- to 8-bit format whose codes share one affine per 32 weights) bit-exact,
on the same kernel and code path as q4, at 2x q4's compute: where 8 bits are chosen, bytes and
fidelity matter more than compute.

Bytes per weight: 8 + 2 * 32 / group bits with bf16 scales: 10 at group 32 (GGUF Q8_0's
group; Q8_0 itself is 8.5), 9 at group 64, the group used to quantize float weights (relative
RMS error 0.6% on the demo draft's weights, so the smaller group would buy nothing; fallback 32,
and UnsupportedShape -> keep bf16 where the kernel cannot take the shape, as for q4).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .q4 import Q4Weight, choose_group

ENCODING = "q8"
GROUP = 64  # for float weights; GGUF's are 32
PLANES = ("hi", "lo")


class Q8Weight:
    encoding = ENCODING

    def __init__(self, hi: Q4Weight, lo: Q4Weight):
        if hi.shape != lo.shape or hi.group != lo.group:
            raise ValueError(f"q8 planes disagree: {hi.shape}/{hi.group} vs {lo.shape}/{lo.group}")
        self.hi, self.lo = hi, lo
        self.shape, self.group = hi.shape, hi.group

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_codes(cls, codes, scale, zero, group: int,
                   scale_dtype: torch.dtype = torch.bfloat16) -> "Q8Weight":
        """codes 0..255 [N, K]; scale, zero [N, K/group] (w = (c - 8) * scale + zero)."""
        codes = torch.as_tensor(np.asarray(codes)).to(torch.uint8)
        scale = torch.as_tensor(np.asarray(scale)).float()
        zero = torch.as_tensor(np.asarray(zero)).float()
        hi = Q4Weight.from_codes(codes >> 4, 16 * scale, torch.zeros_like(zero), group, scale_dtype)
        lo = Q4Weight.from_codes(codes & 0x0F, scale, zero + 128 * scale, group, scale_dtype)
        return cls(hi, lo)

    @classmethod
    def from_gguf(cls, raw: np.ndarray, qtype: str, shape: tuple[int, int],
                  scale_dtype: torch.dtype = torch.bfloat16) -> "Q8Weight":
        from . import gguf_blocks
        codes, scale, zero = gguf_blocks.decode_for("q8", raw, qtype, shape)
        return cls.from_codes(codes, scale, zero, gguf_blocks.GROUP, scale_dtype)

    @classmethod
    def quantize(cls, weight: torch.Tensor, group: int | None = None,
                 scale_dtype: torch.dtype = torch.bfloat16) -> "Q8Weight":
        """Round-to-nearest, symmetric (scale = absmax / 127 per group, as GGUF Q8_0). At 8 bits
        symmetric is as accurate as min..max (step absmax/127 vs (max - min)/255) and keeps both
        planes' zeros (0 and 8s) exact in bf16, where an asymmetric zero would be rounded."""
        n_rows, k = weight.shape
        group = group or choose_group((n_rows, k), GROUP)
        w = weight.detach().float().reshape(n_rows, k // group, group)
        scale = (w.abs().amax(-1) / 127).to(scale_dtype).float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = (torch.round(w / scale.unsqueeze(-1)) + 128).clamp_(0, 255).to(torch.uint8)
        return cls.from_codes(codes.view(n_rows, k), scale, -120 * scale, group, scale_dtype)

    # -- compute ------------------------------------------------------------------------------
    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype == torch.float32:  # exact path, as q4
            return F.linear(x, self.dequantize(torch.float32), bias)
        out = (self.hi.linear(x).float() + self.lo.linear(x).float()).to(x.dtype)
        return out if bias is None else out + bias.to(x.dtype)

    def codes(self) -> torch.Tensor:
        return (self.hi.codes() << 4) | self.lo.codes()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.hi.dequantize() + self.lo.dequantize()).to(dtype)

    def rows(self, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows `index` of the dequantized weight (embedding lookup); == dequantize()[index]."""
        return (self.hi.rows(index) + self.lo.rows(index)).to(dtype)

    # -- bytes --------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return self.hi.nbytes + self.lo.nbytes

    def header(self) -> dict:
        hi = self.hi.header()
        parts = {f"{plane}_{name}": spec for plane in PLANES for name, spec in hi["parts"].items()}
        return {"encoding": ENCODING, "shape": list(self.shape), "group": self.group,
                "layout": self.hi.layout, "parts": parts}

    def parts(self) -> dict[str, torch.Tensor]:
        return {f"{plane}_{name}": tensor for plane in PLANES
                for name, tensor in getattr(self, plane).parts().items()}

    @classmethod
    def from_parts(cls, header: dict, parts: dict[str, torch.Tensor],
                   check: bool = True) -> "Q8Weight":
        plane_header = {"encoding": "q4", "shape": header["shape"], "group": header["group"],
                        "layout": header["layout"]}
        planes = [Q4Weight.from_parts(plane_header, {name: parts[f"{plane}_{name}"]
                                                     for name in ("packed", "scales_zeros")},
                                     check)
                  for plane in PLANES]
        return cls(*planes)

    def repack_for_this_machine(self) -> "Q8Weight":
        return Q8Weight(self.hi.repack_for_this_machine(), self.lo.repack_for_this_machine())
