"""A draft model's low-bit copy: its decoder layers' linear weights and its own output layer
held in q4 (or q8), computed by the int4 kernel a GGUF target's q4 layers use
(offload/encodings/q4.py), norms in bf16.

Why: beside a small quantized target a bf16 draft can take more RAM than the target's layers
(the demo pair: 75.5 MB of draft against 66.4 MB of q4 layers), so under a budget that holds
the pair the target streams part of its layers on every pass. The q4 copy of that draft takes
23.6 MB (layers 17.7, output rows 5.9), which leaves the whole target pinned. At one token a
layer of this size costs about the same in q4 as in bf16 (the small matmuls are not what a
draft token's time goes to): the copy buys RAM, not compute.

What is made, and where:
  - the layers: the draft packed into a store with its linear weights rounded to nearest
    (`specdec pack --quant q4`: group 32, bf16 scales), once per draft file and int4 layout,
    into the cache (`<cache>/drafts/`, like a GGUF target's store), and read whole on load;
  - the output layer: a draft that borrows its target's table copies its rows out of it, so
    they are encoded at load (~0.1 s for the demo's 16,384 rows), from whichever target it is
    paired with (loading.load_resident's `encode_head`).
The target verifies every drafted token, so the copy changes how often drafts are taken, never
what is generated.

In float32 (exact comparisons) a q4 weight dequantizes on every call: there the draft runs
from its float weights, as a plain model draft (drafts.ModelDraft).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from offload.encodings.from_float import QUANTIZERS, quantize_float
from offload.format import FORMAT_VERSION, is_store, open_store
from offload.pack import pack
from offload.repack import needs_repack, repack_store

from .cache_root import cache_root
from .drafts import Draft, ModelDraft
from .loading import LoadedModel, OpenedModel, load_resident, open_model
from .memory_plan import draft_bytes, streaming_plan

QUANTIZED_DTYPE = torch.bfloat16  # the int4 kernel's activations
DRAFT_STORE_VERSION = 1  # bump when what the cached copy holds changes


@dataclass(frozen=True)
class QuantizedDraft(Draft):
    """A model draft (a directory of safetensors, or a .gguf) run as its low-bit copy: its
    layers in `encoding`, its own output layer in `head_encoding` (default: the same)."""
    source: Path
    encoding: str = "q4"
    head_encoding: str | None = None
    cache_dir: Path | None = None
    store: OpenedModel | None = None  # the copy, once opened (packed on first use)
    progress: bool = True
    modes = ModelDraft.modes

    def __post_init__(self):
        for name in ("encoding", "head_encoding"):
            value = getattr(self, name)
            if value not in QUANTIZERS and not (name == "head_encoding" and value is None):
                raise ValueError(f"draft {name} {value!r}: use one of {', '.join(QUANTIZERS)}")

    @property
    def head(self) -> str:
        return self.head_encoding or self.encoding

    @property
    def form(self) -> str:
        """'q4', or 'q8 (output layer q4)' where they differ."""
        return self.encoding if self.head == self.encoding else f"{self.encoding} (output layer {self.head})"

    def describe(self) -> str:
        return f"draft {self.source} ({self.form} copy)"

    def label(self, model: LoadedModel) -> str:
        return f"{self.source} ({self.form} copy: {model.path})"

    def opened(self) -> "QuantizedDraft":
        if self.store is not None:
            return self
        path = quantized_store(Path(self.source), self.encoding, self.cache_dir, self.progress)
        return replace(self, store=open_model(path))

    def plan(self, store, args, ram, dtype, max_context):
        if dtype != QUANTIZED_DTYPE:
            return self._float().plan(store, args, ram, dtype, max_context)
        return streaming_plan(store, args, self.opened().store, ram, dtype, max_context,
                              head_encoding=self.head)

    def resident_model(self, target, dtype):
        if dtype != QUANTIZED_DTYPE:
            return self._float().resident_model(target, dtype)
        store = self.opened().store
        model = load_resident(store, dtype, embeddings_from=target, kernels=target.model.kernels,
                              encode_head=partial(_encode, self.head))
        nbytes = draft_bytes(store, dtype, head_encoding=self.head)
        return replace(model, description=f"{Path(self.source).name} as {self.form} in RAM "
                                          f"({nbytes / 1e6:.1f} MB)")

    def streamed_model(self, target, store, weights, plan, dtype, cache_dir=None, progress=True):
        return self.resident_model(target, dtype)

    def _float(self) -> ModelDraft:
        return ModelDraft(Path(self.source))


def quantized_store(source: Path, encoding: str, cache_dir=None, progress: bool = True) -> Path:
    """The draft `source` packed with its linear weights in `encoding`, in the cache: packed on
    first use, repacked once if the cache was made on a CPU with another int4 layout. The
    folder name carries the source files' identity (path, size, mtime), so a retrained draft
    gets a new copy."""
    out = quantized_store_path(source, encoding, cache_dir)
    if not is_store(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        pack(source, out, progress=progress, overwrite=True, quant=encoding)
    elif needs_repack(open_store(out)):
        repack_store(out, progress=progress)
    return out


def quantized_store_path(source: Path, encoding: str, cache_dir=None) -> Path:
    source = source.expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such draft; give a draft directory (config.json "
                                "and *.safetensors) or a .gguf file.")
    files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else [source]
    ident = "|".join(f"{p}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files)
    ident += f"|{encoding}|v{FORMAT_VERSION}|d{DRAFT_STORE_VERSION}"
    key = hashlib.sha1(ident.encode()).hexdigest()[:12]
    return cache_root(cache_dir) / "drafts" / f"{source.stem}-{encoding}-{key}"


def _encode(encoding: str, weight: torch.Tensor):
    return quantize_float(weight, encoding).value
