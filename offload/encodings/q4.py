"""q4: 4-bit weights computed by torch's CPU int4 kernel, read zero-copy from a buffer.

A `Q4Weight` of shape (N, K) holds
  packed        uint8 [N, K/2]          `_convert_weight_to_int4pack_for_cpu` bytes (this CPU's layout)
  scales_zeros  bf16  [K/group, N, 2]   w = (q - 8) * scale + zero, q in 0..15
and the layout fingerprint the bytes were packed under (see int4_layout).

Why store the CPU-specific packed bytes rather than portable nibbles: a streamed layer is read
every pass, and turning portable nibbles into the kernel's order runs at ~0.2 GB/s (15-18 s per
7B pass), so it can only happen once, never per read. Storing the packed bytes makes a read a
plain zero-copy view; the price is that a store moved to a CPU with another layout must be
repacked once. Every layout torch uses today is a known nibble permutation, so that repack needs
only the store itself (`repack_for_this_machine`, same 0.2 GB/s, once); an unknown layout is a
clear error that says to pack again from the source. Keeping portable nibbles beside the packed
bytes would double the store for a case (moving a store between CPUs) that the source file
already covers.

Activations: the kernel is fast only for bf16 activations (fp32 activations take a fallback
18-140x slower than bf16 F.linear, measured on 4096x11008 at n = 1 and 8), so bf16/fp16 inputs
run the kernel in bf16 and return in the input's dtype. float32 inputs take the exact path
instead: dequantize to float32 and F.linear, so float32 mode equals F.linear(x, self.dequantize())
bit for bit and compares exactly with a float32 reference built from gguf-py. It is slow
(dequantize() takes ~0.4 s for a 4096x11008 matrix, one thread, i.e. ~0.07 GB/s of stored bytes
or ~0.5 s per pass of SmolLM2-135M): float32 mode is for checking, not for speed, and nothing
is cached (a cache would break the RAM budget).

Scales are stored in bf16, the dtype the kernel needs for bf16 activations: per weight the error
is at most |q - 8| * 2^-9 <= 0.016 of a quantization step plus the zero's rounding (measured
<= 0.04 step), the size of rounding the dequantized weights to bf16. float32 scales are accepted
(`scale_dtype=torch.float32`, 2x the scale bytes) where bit-exactness against GGUF matters.

Group size for quantizing float weights (`Q4Weight.quantize`): 32. Bytes per weight are
4 + 32/group bits: 5.0 at 32 (0.31x of bf16, inside the 0.32x goal), 4.5 at 64 (0.28x), 4.25 at
128. Kernel speed does not depend on it (4096x11008, n = 1/8/16: 1.29/4.48/12.5 ms at 32,
1.28/4.43/12.5 at 64, 1.21/4.39/12.6 at 128). Round-to-nearest on the demo draft's trained
weights (56 matrices): relative RMS error 6.7% at 32, 8.9% at 64 (10.4% at 128 on the 8 whose
K allows it): 64 saves 10% of the bytes for 32% more error, and without calibration (no GPTQ/AWQ)
the error is what we can least afford (caveat: the draft was initialised from the Q4_1 target,
whose group-32 grid may favour 32; no other real float weights are available offline). 32 is also the granularity of GGUF's Q4_0/Q4_1/Q4_K, so a
store quantized here sits in the same class as the files users run. A shape the kernel cannot
take (N % 16 != 0 or K % 32 != 0) raises `UnsupportedShape`, and the packer keeps that tensor in
bf16 (from_float.quantize_float). One constant (DEFAULT_GROUP) changes the choice.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import int4_layout
from .int4_layout import check_layout, layout_fingerprint

ENCODING = "q4"
INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default  # the overload: no per-call resolution
KERNEL_GROUPS = (32, 64, 128, 256)
DEFAULT_GROUP = 32


class UnsupportedShape(ValueError):
    """The int4 kernel cannot take a weight of this shape (keep it in bf16)."""


def check_shape(shape: tuple[int, int], group: int) -> None:
    n_rows, k = shape
    if group not in KERNEL_GROUPS:
        raise UnsupportedShape(f"group size {group} is not one the int4 kernel takes {KERNEL_GROUPS}")
    if n_rows % 16 or k % group:
        raise UnsupportedShape(f"weight of shape {tuple(shape)} does not fit the int4 kernel "
                               f"(needs N % 16 == 0 and K % {group} == 0)")


def choose_group(shape: tuple[int, int], preferred: int = DEFAULT_GROUP) -> int:
    """The group used to quantize a float weight of `shape`, or UnsupportedShape."""
    for group in (preferred, 32):
        if shape[0] % 16 == 0 and shape[1] % group == 0:
            return group
    check_shape(shape, 32)  # raises with the reason
    return 32


def affine_to_scales_zeros(scale, zero, dtype) -> torch.Tensor:
    """Per-row groups scale, zero [N, K/g] -> the kernel's [K/g, N, 2]."""
    scale, zero = torch.as_tensor(np.asarray(scale)), torch.as_tensor(np.asarray(zero))
    return torch.stack([scale, zero], dim=2).transpose(0, 1).to(dtype).contiguous()


class Q4Weight:
    encoding = ENCODING

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, group: int,
                 shape: tuple[int, int], layout: dict):
        n_rows, k = shape
        check_shape(shape, group)
        if packed.dtype != torch.uint8 or packed.numel() != n_rows * k // 2:
            raise ValueError(f"q4 packed bytes: {packed.dtype} x {packed.numel()}, expected "
                             f"uint8 x {n_rows * k // 2} for shape {tuple(shape)}")
        if tuple(scales_zeros.shape) != (k // group, n_rows, 2):
            raise ValueError(f"q4 scales_zeros of shape {tuple(scales_zeros.shape)}, expected "
                             f"{(k // group, n_rows, 2)} for shape {tuple(shape)}, group {group}")
        self.packed = packed.view(n_rows, k // 2)
        self.scales_zeros = scales_zeros
        self.group = group
        self.shape = (n_rows, k)
        self.layout = dict(layout)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_codes(cls, codes, scale, zero, group: int,
                   scale_dtype: torch.dtype = torch.bfloat16) -> "Q4Weight":
        """codes 0..15 [N, K]; scale, zero [N, K/group] (w = (q - 8) * scale + zero)."""
        codes = torch.as_tensor(np.asarray(codes))
        check_shape(tuple(codes.shape), group)
        packed = int4_layout.pack_for_this_machine(codes)
        return cls(packed, affine_to_scales_zeros(scale, zero, scale_dtype), group,
                   tuple(codes.shape), layout_fingerprint())

    @classmethod
    def from_gguf(cls, raw: np.ndarray, qtype: str, shape: tuple[int, int],
                  scale_dtype: torch.dtype = torch.bfloat16) -> "Q4Weight":
        """Raw GGUF blocks of Q4_0, Q4_1 or Q4_K for an [N, K] weight, kept exactly."""
        from . import gguf_blocks
        codes, scale, zero = gguf_blocks.decode_for("q4", raw, qtype, shape)
        return cls.from_codes(codes, scale, zero, gguf_blocks.GROUP, scale_dtype)

    @classmethod
    def quantize(cls, weight: torch.Tensor, group: int | None = None,
                 scale_dtype: torch.dtype = torch.bfloat16) -> "Q4Weight":
        """Round-to-nearest, asymmetric (min..max per group) quantization of a float weight."""
        codes, scale, zero, group = rtn_affine(weight, 16, group or choose_group(tuple(weight.shape)),
                                               scale_dtype)
        return cls.from_codes(codes, scale, zero, group, scale_dtype)

    # -- compute ------------------------------------------------------------------------------
    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype == torch.float32:  # exact path, see the module docstring
            return F.linear(x, self.dequantize(torch.float32), bias)
        if self.layout.get("layout") != int4_layout.current_layout():
            check_layout(self.layout, "q4 weight")  # raises: the kernel would read garbage
        k = x.shape[-1]
        if k != self.shape[1]:
            raise ValueError(f"input of width {k} for a q4 weight of shape {self.shape}")
        # Every conversion below is skipped when it would return its input: this runs ~200
        # times per pass of a small model, where each no-op call costs ~1 us of dispatch
        # (a one-token pass of the demo target spent ~6 us per call here beside ~9 us in the
        # kernel). A bf16 [T, K] input and bf16 scales go to the kernel as they are.
        x2 = x if x.dim() == 2 else x.reshape(-1, k)
        if x2.dtype != torch.bfloat16:
            x2 = x2.to(torch.bfloat16)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        scales_zeros = self.scales_zeros
        if scales_zeros.dtype != torch.bfloat16:
            scales_zeros = scales_zeros.to(torch.bfloat16)
        out = INT4_MM(x2, self.packed, self.group, scales_zeros)
        if x.dim() != 2:
            out = out.view(*x.shape[:-1], self.shape[0])
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return out if bias is None else out + bias.to(x.dtype)

    def codes(self) -> torch.Tensor:
        """The portable codes uint8 [N, K] (0..15) behind the packed bytes (any known layout)."""
        return int4_layout.unpack_codes(self.packed, *self.shape, self._known_layout())

    def _known_layout(self) -> int4_layout.Layout:
        layout = int4_layout.KNOWN_LAYOUTS.get(self.layout.get("layout"))
        if layout is None:
            raise int4_layout.LayoutMismatchError(
                f"q4 weight packed for unknown layout {self.layout.get('layout')!r}: cannot read "
                f"its codes; pack the store again from its source file on this machine.")
        return layout

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [N, K] as float, computed in float32 from the stored values (reference)."""
        return self._dequantize(self.codes(), slice(None)).to(dtype)

    def rows(self, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows `index` of the dequantized weight (embedding lookup), unpacking only their
        row blocks; equal to dequantize()[index]."""
        layout = self._known_layout()
        index = torch.as_tensor(index, dtype=torch.long)
        codes = int4_layout.unpack_rows(self.packed, *self.shape, layout, index)
        return self._dequantize(codes, index.reshape(-1)).view(*index.shape, self.shape[1]).to(dtype)

    def _dequantize(self, codes: torch.Tensor, rows) -> torch.Tensor:
        k = self.shape[1]
        sz = self.scales_zeros[:, rows].float()                 # [K/g, rows, 2]
        scale = sz[..., 0].t().contiguous().unsqueeze(-1)       # [rows, K/g, 1]
        zero = sz[..., 1].t().contiguous().unsqueeze(-1)
        q = codes.view(-1, k // self.group, self.group).float()
        # (q - 8) * scale + zero as separate roundings, in place (the kernel's formula)
        return q.sub_(8).mul_(scale).add_(zero).view(-1, k)

    # -- bytes --------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_zeros.nbytes

    def header(self) -> dict:
        return {"encoding": ENCODING, "shape": list(self.shape), "group": self.group,
                "layout": self.layout, "parts": part_specs(self.shape, self.group,
                                                           self.scales_zeros.dtype)}

    def parts(self) -> dict[str, torch.Tensor]:
        return {"packed": self.packed, "scales_zeros": self.scales_zeros}

    @classmethod
    def from_parts(cls, header: dict, parts: dict[str, torch.Tensor],
                   check: bool = True) -> "Q4Weight":
        """Rebuild from views (zero copy); refuses bytes packed for another CPU layout
        (check=False only to repack them)."""
        if check:
            check_layout(header["layout"], "q4 weight")
        return cls(parts["packed"], parts["scales_zeros"], header["group"],
                   tuple(header["shape"]), header["layout"])

    def repack_for_this_machine(self) -> "Q4Weight":
        """A copy whose bytes use this machine's layout (once per store and machine)."""
        packed = int4_layout.repack(self.packed, *self.shape, self.layout)
        return Q4Weight(packed, self.scales_zeros.clone(), self.group, self.shape,
                        layout_fingerprint())


def part_specs(shape, group: int, scale_dtype: torch.dtype) -> dict:
    n_rows, k = shape
    return {"packed": {"dtype": "uint8", "shape": [n_rows, k // 2]},
            "scales_zeros": {"dtype": str(scale_dtype).removeprefix("torch."),
                             "shape": [k // group, n_rows, 2]}}


def rtn_affine(weight: torch.Tensor, levels: int, group: int, scale_dtype: torch.dtype):
    """Round-to-nearest onto `levels` evenly spaced values between each group's min and max.
    Scale and zero are rounded to `scale_dtype` first and the codes computed against the
    rounded values, so rounding the scales adds no error beyond a possible clamp at the ends.
    -> codes uint8 [N, K], scale, zero float32 [N, K/group] (w = (q - 8) * scale + zero), group."""
    n_rows, k = weight.shape
    check_shape((n_rows, k), group)
    w = weight.detach().float().reshape(n_rows, k // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / (levels - 1)).to(scale_dtype).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant group: any scale
    zero = (lo + 8 * scale).to(scale_dtype).float()
    codes = torch.round((w - zero.unsqueeze(-1)) / scale.unsqueeze(-1) + 8).clamp_(0, levels - 1)
    return codes.to(torch.uint8).view(n_rows, k), scale, zero, group
