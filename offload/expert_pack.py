"""Write a layer's routed experts into its experts file, one contiguous extent per expert.

Tensors arrive in checkpoint order, which need not keep an expert's three tensors together
(shards may split them): each expert's tensors wait here until all have arrived, then go out
back to back, each 4096-aligned, the extent padded to a whole block and checksummed on its
own (offload/format.py, version 3). At most the experts still incomplete are held in RAM.
"""
from __future__ import annotations

import hashlib

from .expert_names import EXPERT_PARTS, expert_tensor_name
from .format import align_up


class IncompleteExperts(ValueError):
    """A checkpoint whose experts lack tensors or repeat them; the message says which."""


class ExpertWriter:
    """Wraps the pack's file writer for one experts file (it appends aligned tensors)."""

    def __init__(self, writer):
        self.writer = writer
        self.pending: dict[int, dict[str, object]] = {}
        self.extents: dict[int, list] = {}

    @property
    def path(self):
        return self.writer.path

    @property
    def tensors(self):
        return self.writer.tensors

    def add(self, expert: int, part: str, value) -> None:
        if part not in EXPERT_PARTS:
            raise IncompleteExperts(f"{expert_tensor_name(expert, part)} is not an expert tensor this "
                                    f"model has (an expert has {', '.join(EXPERT_PARTS)}).")
        parts = self.pending.setdefault(expert, {})
        if part in parts or expert in self.extents:
            raise IncompleteExperts(f"{expert_tensor_name(expert, part)} appears twice in the checkpoint.")
        parts[part] = value
        if len(parts) == len(EXPERT_PARTS):
            self._write(expert, self.pending.pop(expert))

    def _write(self, expert: int, parts: dict) -> None:
        w = self.writer
        w._pad_to(align_up(w.size))
        start, sha = w.size, hashlib.sha256()
        w.taps.append(sha)
        try:
            for part in EXPERT_PARTS:
                w.add(expert_tensor_name(expert, part), parts[part])
            w._pad_to(align_up(w.size))
        finally:
            w.taps.remove(sha)
        self.extents[expert] = [start, w.size - start, sha.hexdigest()]

    def finish(self) -> dict:
        """The file's manifest entry, with `extents` indexed by expert id."""
        missing = sorted(self.pending)
        if missing or sorted(self.extents) != list(range(len(self.extents))):
            gaps = missing or sorted(set(range(max(self.extents) + 1)) - set(self.extents))
            raise IncompleteExperts(f"{self.path.name}: experts {gaps[:5]} are incomplete or missing.")
        out = self.writer.finish()
        out["extents"] = [self.extents[e] for e in range(len(self.extents))]
        return out

    def abort(self) -> None:
        self.writer.abort()
