"""The byte layout of torch's CPU int4 kernel (`aten._weight_int4pack_mm_for_cpu`).

`aten._convert_weight_to_int4pack_for_cpu(codes int32 [N, K])` returns uint8 [N, K/2] whose
order depends on the instruction set torch's CPU kernels were dispatched to. The order is a fixed
permutation of nibbles (torch 2.x, aten/src/ATen/native/cpu/int4mm_kernel.cpp): rows come in
blocks of `block_n` (4 x the float vector width: 64 under AVX512, 32 under AVX2 and without a
vector ISA, 16 under 128-bit NEON), each block stored as [K, nb/2] bytes:
  - "split": byte[k, d] = code[d, k] | code[d + nb/2, k] << 4   (full blocks under AVX512/AVX2)
  - "pairs": byte[k, j] = code[2j, k] | code[2j + 1, k] << 4     (partial blocks; plain builds)
Bytes packed under one layout give garbage under another, so a store records the layout it was
packed for (`layout_fingerprint()`) and checks it on open (`check_layout`).

The layout name is *probed* (pack a small random matrix with torch, compare with each known
permutation, then run the matmul once against our own dequantization), not inferred from the torch
version: a torch upgrade that keeps the layout needs no repack, and a layout we do not know is
named "unknown-<hash>" so it can never be mistaken for a known one. Because every known layout is
a plain permutation, bytes packed for any known layout can be turned back into portable codes
(`unpack_codes`) and repacked for this machine without the source file.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import torch

KERNEL = "aten._weight_int4pack_mm_for_cpu"


class LayoutMismatchError(RuntimeError):
    """Packed int4 bytes were made for another CPU layout than this machine's."""


@dataclass(frozen=True)
class Layout:
    name: str
    block_n: int
    full_block: str  # "split" or "pairs"; partial blocks are always "pairs"


# pairs16 (128-bit NEON) is read from torch's source, untested here: on such a machine the
# probe either confirms it or names the layout "unknown-...".
KNOWN_LAYOUTS = {
    layout.name: layout
    for layout in (Layout("split64", 64, "split"),   # AVX512
                   Layout("split32", 32, "split"),   # AVX2
                   Layout("pairs32", 32, "pairs"),   # no vector ISA (DEFAULT)
                   Layout("pairs16", 16, "pairs"))   # 128-bit NEON
}


def _split(n_rows: int, block_n: int) -> tuple[int, int]:
    """(rows in full blocks, rows in the partial last block)."""
    full = n_rows // block_n * block_n
    return full, n_rows - full


def _full_mode(layout: Layout, nb: int) -> str:
    return layout.full_block if nb == layout.block_n else "pairs"


def pack_codes(codes: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Portable codes uint8 [N, K] (values 0..15) -> packed uint8 [N, K/2] in `layout`."""
    n_rows, k = codes.shape
    codes = codes.to(torch.uint8)
    out = torch.empty(n_rows * k // 2, dtype=torch.uint8)
    full, tail = _split(n_rows, layout.block_n)
    for start, nb, count in ((0, layout.block_n, full // layout.block_n), (full, tail, 1 if tail else 0)):
        if not count:
            continue
        block = codes[start:start + nb * count].view(count, nb, k).transpose(1, 2)  # [c, K, nb]
        if _full_mode(layout, nb) == "split":
            lo, hi = block[..., :nb // 2], block[..., nb // 2:]
        else:
            lo, hi = block[..., 0::2], block[..., 1::2]
        out[start * k // 2:(start + nb * count) * k // 2].view(count, k, nb // 2).copy_(lo | (hi << 4))
    return out.view(n_rows, k // 2)


def unpack_codes(packed: torch.Tensor, n_rows: int, k: int, layout: Layout) -> torch.Tensor:
    """Packed uint8 (any shape, N*K/2 bytes) in `layout` -> portable codes uint8 [N, K]."""
    flat = packed.reshape(-1)
    codes = torch.empty(n_rows, k, dtype=torch.uint8)
    full, tail = _split(n_rows, layout.block_n)
    for start, nb, count in ((0, layout.block_n, full // layout.block_n), (full, tail, 1 if tail else 0)):
        if not count:
            continue
        block = flat[start * k // 2:(start + nb * count) * k // 2].view(count, k, nb // 2)
        lo, hi = block & 0x0F, block >> 4
        if _full_mode(layout, nb) == "split":
            rows = torch.cat([lo, hi], dim=2)                           # [c, K, nb]
        else:
            rows = torch.stack([lo, hi], dim=3).view(count, k, nb)
        codes[start:start + nb * count].view(count, nb, k).copy_(rows.transpose(1, 2))
    return codes


def unpack_rows(packed: torch.Tensor, n_rows: int, k: int, layout: Layout,
                rows: torch.Tensor) -> torch.Tensor:
    """Codes uint8 [len(rows), K] of some rows only: unpacks just the row blocks holding them
    (an embedding lookup reads K * block_n / 2 bytes per distinct block, not the matrix)."""
    flat = packed.reshape(-1)
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
        raise IndexError(f"row index out of range for a weight of {n_rows} rows")
    out = torch.empty(rows.numel(), k, dtype=torch.uint8)
    block_of = rows // layout.block_n
    for block in torch.unique(block_of).tolist():
        start = block * layout.block_n
        nb = min(layout.block_n, n_rows - start)
        piece = flat[start * k // 2:(start + nb) * k // 2]
        sub = Layout(layout.name, nb, _full_mode(layout, nb))
        codes = unpack_codes(piece, nb, k, sub)
        hit = block_of == block
        out[hit] = codes[rows[hit] - start]
    return out


def torch_pack(codes: torch.Tensor) -> torch.Tensor:
    """Pack portable codes [N, K] with torch itself (this machine's layout)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)


def pack_for_this_machine(codes: torch.Tensor) -> torch.Tensor:
    """Codes [N, K] -> this machine's packed bytes. For a known layout (the probe checked that
    torch packs exactly so) our own permutation is used: ~3x faster than torch's, which needs
    the codes as int32 (8x their size)."""
    layout = KNOWN_LAYOUTS.get(current_layout())
    return pack_codes(codes, layout) if layout is not None else torch_pack(codes)


@functools.lru_cache(maxsize=1)
def current_layout() -> str:
    """Name of the layout torch packs to on this machine, probed once per process."""
    gen = torch.Generator().manual_seed(0)
    n_rows, k, group = 112, 64, 32  # 112 = 64 + 48 = 3*32 + 16: full and partial blocks
    codes = torch.randint(0, 16, (n_rows, k), generator=gen, dtype=torch.uint8)
    packed = torch_pack(codes)
    name = next((name for name, layout in KNOWN_LAYOUTS.items()
                 if torch.equal(packed, pack_codes(codes, layout))), None)
    if name is None:
        return "unknown-" + hashlib.sha256(packed.numpy().tobytes()).hexdigest()[:16]
    # The matmul must read the bytes the way we think it does (same formula, same order).
    scales = torch.rand(k // group, n_rows, generator=gen) / 8 + 0.01
    zeros = torch.rand(k // group, n_rows, generator=gen) - 0.5
    sz = torch.stack([scales, zeros], dim=2).to(torch.bfloat16)
    x = torch.randn(2, k, generator=gen).to(torch.bfloat16)
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz).float()
    weight = ((codes.float() - 8).view(n_rows, k // group, group)
              * sz[..., 0].float().t().unsqueeze(-1) + sz[..., 1].float().t().unsqueeze(-1))
    want = x.float() @ weight.view(n_rows, k).t()
    if not torch.allclose(got, want, rtol=2e-2, atol=2e-2):
        return "unknown-matmul-" + name
    return name


def layout_fingerprint() -> dict:
    """What a store records about the int4 bytes it holds. Only "layout" decides compatibility;
    torch and isa are kept to make an error message useful."""
    return {"kernel": KERNEL, "layout": current_layout(), "torch": torch.__version__,
            "isa": torch.backends.cpu.get_cpu_capability()}


def check_layout(recorded: dict, what: str = "this tensor") -> None:
    """Raise LayoutMismatchError unless bytes packed under `recorded` are valid here."""
    here = layout_fingerprint()
    if recorded.get("kernel") == here["kernel"] and recorded.get("layout") == here["layout"]:
        return
    can_repack = recorded.get("layout") in KNOWN_LAYOUTS and here["layout"] in KNOWN_LAYOUTS
    fix = ("repack it for this machine (the bytes can be converted: repack_for_this_machine)"
           if can_repack else "pack the store again from its source file on this machine")
    raise LayoutMismatchError(
        f"{what}: int4 bytes were packed for layout {recorded.get('layout')!r} "
        f"(torch {recorded.get('torch')}, {recorded.get('isa')}) but this machine uses "
        f"{here['layout']!r} (torch {here['torch']}, {here['isa']}); reading them would give "
        f"wrong results. Fix: {fix}.")


def repack(packed: torch.Tensor, n_rows: int, k: int, recorded: dict) -> torch.Tensor:
    """Bytes packed under a known foreign layout -> bytes for this machine (about 0.2 GB/s:
    once per store and machine, never per read)."""
    name = recorded.get("layout")
    if name not in KNOWN_LAYOUTS:
        raise LayoutMismatchError(
            f"cannot repack int4 bytes of unknown layout {name!r}; pack the store again from "
            f"its source file on this machine.")
    return pack_for_this_machine(unpack_codes(packed, n_rows, k, KNOWN_LAYOUTS[name]))
