"""Weight encodings for streamed and resident layers: one module per encoding.

  q4.Q4Weight, q8.Q8Weight   quantized weights with .linear(x, bias) and .dequantize()
  int4_layout                the CPU int4 kernel's byte layout: fingerprint, check, repack
  gguf_blocks, gguf_types    GGUF blocks -> encodings (exact where possible), per-type plan
  from_float                 float weights -> q4 / q8 at pack time (bf16 fallback), Encoded

Serialization contract (for the store format): an encoded weight gives
  weight.header() -> JSON-able dict {"encoding", "shape", "group", "layout", "parts": {name:
                     {"dtype", "shape"}}}
  weight.parts()  -> {name: plain contiguous tensor}, written as-is, in `parts` order
and `decode(header, parts)` rebuilds it from views of the reader's buffer without copying
(`views(header, buffer, offset)` makes those views from one buffer holding the parts back to back
at `part_offsets`). A header whose int4 layout differs from this machine's raises
LayoutMismatchError naming the fix; `decode(..., repack=True)` converts instead (a copy, slow:
once per store and machine).
"""
from __future__ import annotations

import torch

from .int4_layout import LayoutMismatchError, layout_fingerprint  # noqa: F401 (API)
from .q4 import Q4Weight, UnsupportedShape  # noqa: F401 (API)
from .q8 import Q8Weight

ENCODINGS = {Q4Weight.encoding: Q4Weight, Q8Weight.encoding: Q8Weight}
ALIGN = 64  # parts start on 64-byte boundaries (cache lines; AVX512 loads)


def encoding_class(header: dict):
    try:
        return ENCODINGS[header["encoding"]]
    except KeyError:
        raise ValueError(f"unknown weight encoding {header.get('encoding')!r}; this version "
                         f"reads {', '.join(ENCODINGS)}. Update specdec or pack the store again."
                         ) from None


def decode(header: dict, parts: dict[str, torch.Tensor], repack: bool = False):
    """The weight over `parts` (zero copy). A foreign int4 layout raises LayoutMismatchError,
    or with repack=True is converted to this machine's layout (a copy)."""
    cls = encoding_class(header)
    if repack and header["layout"].get("layout") != layout_fingerprint()["layout"]:
        return cls.from_parts(header, parts, check=False).repack_for_this_machine()
    return cls.from_parts(header, parts)


def part_offsets(header: dict) -> dict[str, tuple[int, int]]:
    """name -> (offset, nbytes) of each part when laid out back to back, each ALIGN-aligned."""
    offsets, cursor = {}, 0
    for name, spec in header["parts"].items():
        nbytes = _itemsize(spec["dtype"]) * _numel(spec["shape"])
        cursor = -(-cursor // ALIGN) * ALIGN
        offsets[name] = (cursor, nbytes)
        cursor += nbytes
    return offsets


def packed_size(header: dict) -> int:
    return max(off + n for off, n in part_offsets(header).values())


def views(header: dict, buffer, offset: int = 0) -> dict[str, torch.Tensor]:
    """Views of each part inside `buffer` (a uint8 tensor, or anything with the buffer protocol:
    mmap, bytearray) starting at `offset`; nothing is copied."""
    if not isinstance(buffer, torch.Tensor):
        buffer = torch.frombuffer(buffer, dtype=torch.uint8)
    out = {}
    for name, (start, nbytes) in part_offsets(header).items():
        spec = header["parts"][name]
        if offset + start + nbytes > buffer.numel():
            raise ValueError(f"weight part {name!r} ends at byte {offset + start + nbytes} but the "
                             f"buffer holds {buffer.numel()}: the layer file is truncated.")
        raw = buffer[offset + start: offset + start + nbytes]
        out[name] = raw.view(_dtype(spec["dtype"])).view(spec["shape"])
    return out


def to_bytes(weight) -> bytes:
    """The parts back to back as `views` expects them (for tests and small writers; a packer
    streaming large tensors should write `weight.parts()` at `part_offsets` itself)."""
    header = weight.header()
    out = bytearray(packed_size(header))
    for name, (start, nbytes) in part_offsets(header).items():
        out[start:start + nbytes] = weight.parts()[name].contiguous().view(torch.uint8).numpy().tobytes()
    return bytes(out)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown part dtype {name!r} in a weight header")
    return dtype


def _itemsize(name: str) -> int:
    return torch.empty(0, dtype=_dtype(name)).element_size()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
