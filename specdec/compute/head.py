"""The output layer in the form the int4 kernel reads, made once per table instead of per pass.

A GGUF's embedding table keeps float32 scales, so that row lookups are exact
(offload/gguf_source.py), but the int4 kernel takes bf16 scales: as a tied output layer,
`Q4Weight.linear` converted them on every call. For SmolLM2's 49152x576 Q8_0 table that is
two planes of [18, 49152, 2] float32 scales (14 MB read, 7 MB written) per pass, measured at
~16% of a one-token pass of the demo target (torch.profiler, one thread, shared CPU;
AVX512 (Zen 4), 2026-12-06), on every token of plain decoding.

`kernel_head` gives the model a copy of such a table whose scales are bf16 already: the values
the per-call conversion produced, so the logits are bit for bit the same. It shares the packed
bytes; only the scales are copied (`kernel_head_nbytes`: 7.1 MB for SmolLM2's table, of which
the RAM plan adds 3.5 MB to the runtime reserve, the other 3.5 MB being the transient that
the per-call conversion allocated inside it, `kernel_head_added_nbytes`). The table
keeps its float32 scales for lookups. One copy per table: a draft that borrows the target's
table gets the target's copy. In float32 compute the kernel is not used (the exact path
dequantizes with the float32 scales), so the table itself stays the output layer.
"""
from __future__ import annotations

import math
import weakref

import torch

from offload.encodings.q4 import Q4Weight
from offload.encodings.q8 import Q8Weight

from ..weights import OUTPUT_IDS

KERNEL_SCALES = torch.bfloat16
_copies: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()


def kernel_head(head, dtype: torch.dtype):
    """`head` as the output layer of a model computing in `dtype`: an encoded weight whose
    scales are not the kernel's dtype gets its kernel copy (made once, shared); anything
    else is returned as it is."""
    if dtype == torch.float32 or not _needs_copy(head):
        return head
    copy = _copies.get(head)
    if copy is None:
        copy = _copies[head] = _with_kernel_scales(head)
    return copy


def _needs_copy(head) -> bool:
    if isinstance(head, Q8Weight):
        return _needs_copy(head.hi) or _needs_copy(head.lo)
    return isinstance(head, Q4Weight) and head.scales_zeros.dtype != KERNEL_SCALES


def _with_kernel_scales(w):
    if isinstance(w, Q8Weight):
        return Q8Weight(_with_kernel_scales(w.hi), _with_kernel_scales(w.lo))
    return Q4Weight(w.packed, w.scales_zeros.to(KERNEL_SCALES), w.group, w.shape, w.layout)


def kernel_head_nbytes(store, dtype: torch.dtype) -> int:
    """RAM the kernel copy of a store's output layer takes in `dtype` compute (0 when the
    model reads its output layer as stored): a tied table, or an lm_head, whose encoded
    scales are stored in another dtype than the kernel's."""
    return sum(_copied_planes(store, dtype))


def kernel_head_added_nbytes(store, dtype: torch.dtype) -> int:
    """What the copy adds to the runtime's peak RAM: its bytes less one plane's, the transient
    that the per-call conversion it replaces allocated at every output layer (inside the
    runtime reserve, offload.budget.DEFAULT_OVERHEAD, which the plan counted already)."""
    planes = _copied_planes(store, dtype)
    return sum(planes) - max(planes, default=0)


def _copied_planes(store, dtype: torch.dtype) -> list[int]:
    if dtype == torch.float32:
        return []
    tensors = store.resident_meta.tensors
    meta = tensors.get("lm_head.weight") or tensors.get("model.embed_tokens.weight")
    if meta is None or meta.encoding is None or OUTPUT_IDS in tensors:
        return []  # plain, or a partial vocabulary (its rows are copied out as plain tensors)
    kernel = str(KERNEL_SCALES).removeprefix("torch.")
    return [math.prod(spec["shape"]) * KERNEL_SCALES.itemsize
            for part, spec in meta.encoding.get("parts", {}).items()
            if part.endswith("scales_zeros") and spec["dtype"] != kernel]
