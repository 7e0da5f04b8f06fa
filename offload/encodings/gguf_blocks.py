"""GGUF quantized blocks -> integer codes + per-32 affine (scale, zero), exactly.

Every type decoded here dequantizes as w = (q - 8) * scale + zero per group of 32 weights,
the formula of torch's int4 kernel; `q` is 0..15 for the 4-bit types and 0..255 for Q8_0
(split into two 4-bit planes by `q8`). Block layouts follow ggml (and gguf-py's reference
dequantization, which the tests compare against bit for bit):
  Q4_0  [d f16][16 B nibbles]            w = d*(q-8)            -> scale d, zero 0
  Q4_1  [d f16][m f16][16 B nibbles]     w = d*q + m            -> scale d, zero m + 8d
  Q4_K  [d f16][dmin f16][12 B 6-bit sc/m][128 B nibbles], 8 sub-blocks of 32
                                          w = d*sc*q - dmin*m    -> scale d*sc, zero 8*d*sc - dmin*m
  Q8_0  [d f16][32 x int8]               w = d*q                -> codes q + 128, scale d, zero -120d
  Q5_0  [d f16][qh 4 B][16 B nibbles]    w = d*(q-16), q 0..31  -> scale d, zero -8d
  Q5_1  [d f16][m f16][qh 4 B][16 B]     w = d*q + m            -> scale d, zero m + 8d
  Q5_K  [d f16][dmin f16][12 B sc/m][qh 32 B][128 B nibbles]: as Q4_K with a fifth bit from qh
  (the Q5 codes are returned as q + 112 with the zero lowered by 112 * scale, see decode)
The float32 arithmetic matches gguf-py's bit for bit whenever `8*scale - dmin*m` (Q4_K) or
`m + 8d` (Q4_1) is exact in float32, i.e. when d and dmin (or m) are within 2^7 of each other in
magnitude -- true of quantizers' output, and checked on the real SmolLM2 file in the tests.
"""
from __future__ import annotations

import numpy as np

GROUP = 32
QK_K = 256
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144, "Q8_0": 34, "Q5_0": 22, "Q5_1": 24, "Q5_K": 176}
BLOCK_WEIGHTS = {"Q4_0": 32, "Q4_1": 32, "Q4_K": QK_K, "Q8_0": 32, "Q5_0": 32, "Q5_1": 32,
                 "Q5_K": QK_K}
FOUR_BIT = ("Q4_0", "Q4_1", "Q4_K")            # codes 0..15: q4
EIGHT_BIT = ("Q8_0", "Q5_0", "Q5_1", "Q5_K")   # codes 0..255 (Q5: 0..31): q8's two planes
KEPT_AS = {"q4": FOUR_BIT, "q8": EIGHT_BIT}     # our encoding -> the GGUF types it keeps exactly


def _blocks(raw: np.ndarray, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    """Raw bytes of an [N, K] tensor -> [N * K / block_weights, block_bytes] uint8."""
    n_rows, k = shape
    per_block = BLOCK_WEIGHTS[qtype]
    if k % per_block:
        raise ValueError(f"{qtype} tensor of shape {shape}: K={k} is not a multiple of its "
                         f"block size {per_block}; the file is malformed.")
    want = n_rows * k // per_block * BLOCK_BYTES[qtype]
    flat = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    if flat.size != want:
        raise ValueError(f"{qtype} tensor of shape {shape}: {flat.size} bytes, expected {want}; "
                         f"the file is truncated or the shape is wrong.")
    return flat.reshape(-1, BLOCK_BYTES[qtype])


def _f16(col: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(col).view(np.float16).astype(np.float32)


def _nibbles_32(qs: np.ndarray) -> np.ndarray:
    """[B, 16] bytes -> [B, 32] codes: low nibbles are weights 0..15, high ones 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _q4k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 bytes of 6-bit scales and mins -> ([B, 8], [B, 8]) (ggml's get_scale_min_k4)."""
    d, m, m_d = np.split(scales.reshape(-1, 3, 4), 3, axis=1)
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.reshape(-1, 8), mn.reshape(-1, 8)


def decode_for(encoding: str, raw: np.ndarray, qtype: str, shape: tuple[int, int]):
    """`decode`, for a GGUF type that `encoding` ("q4" or "q8") keeps exactly; else ValueError."""
    kept = KEPT_AS[encoding]
    if qtype not in kept:
        raise ValueError(f"{encoding} keeps GGUF {', '.join(kept)} exactly, not {qtype}")
    return decode(raw, qtype, shape)


def decode(raw: np.ndarray, qtype: str, shape: tuple[int, int]):
    """-> (codes uint8 [N, K], scale float32 [N, K/32], zero float32 [N, K/32])."""
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"GGUF type {qtype} has no exact block decoder; exact: "
                         f"{', '.join(BLOCK_BYTES)}.")
    n_rows, k = shape
    b = _blocks(raw, qtype, shape)
    if qtype == "Q4_0":
        scale = _f16(b[:, 0:2])[:, 0]
        codes, zero = _nibbles_32(b[:, 2:]), np.zeros_like(scale)
    elif qtype == "Q4_1":
        d, m = _f16(b[:, 0:2])[:, 0], _f16(b[:, 2:4])[:, 0]
        codes, scale, zero = _nibbles_32(b[:, 4:]), d, m + 8 * d
    elif qtype == "Q4_K":
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
        sc, mn = _q4k_scale_min(b[:, 4:16])
        scale = d * sc.astype(np.float32)                    # [B, 8]
        zero = 8 * scale - dmin * mn.astype(np.float32)
        qs = b[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        codes = (qs & 0x0F).reshape(-1, QK_K)                # sub-block 2c: low nibbles of chunk c
    elif qtype in ("Q5_0", "Q5_1"):
        d = _f16(b[:, 0:2])[:, 0]
        head = 2 if qtype == "Q5_0" else 4
        qh = np.ascontiguousarray(b[:, head:head + 4]).view("<u4")        # [B, 1]
        high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)  # bit j: weight j
        codes, scale = _nibbles_32(b[:, head + 4:]) | (high << 4), d
        zero = -8 * d if qtype == "Q5_0" else _f16(b[:, 2:4])[:, 0] + 8 * d
    elif qtype == "Q5_K":
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
        sc, mn = _q4k_scale_min(b[:, 4:16])
        scale = d * sc.astype(np.float32)
        zero = 8 * scale - dmin * mn.astype(np.float32)
        low = b[:, 48:].reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        high = b[:, 16:48].reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
        codes = ((low & 0x0F).reshape(-1, 8, 32) | ((high & 1) << 4)).reshape(-1, QK_K)
    else:  # Q8_0: codes 0..255 = q + 128; w = d*q = (codes - 8)*d + (8 - 128)*d
        scale = _f16(b[:, 0:2])[:, 0]
        codes = (b[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        zero = -120 * scale
    if qtype in ("Q5_0", "Q5_1", "Q5_K"):
        # Centre the 5-bit codes in 0..255 (q + 112: 112..143) so q8's two planes stay small
        # (hi - 8 in {-1, 0}); uncentred, each plane's output is ~128 steps and their bf16
        # sum cancels catastrophically.
        codes, zero = codes + np.uint8(112), zero - 112 * scale
    return (codes.reshape(n_rows, k), scale.reshape(n_rows, k // GROUP).astype(np.float32),
            zero.reshape(n_rows, k // GROUP).astype(np.float32))
