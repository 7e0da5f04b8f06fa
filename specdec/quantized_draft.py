"""A draft model's low-bit copy (`draft_quant="q4"`, `--draft-quant q4`): its decoder layers'
linear weights and its own output layer held in q4 (or q8), computed by the int4 kernel a GGUF
target's q4 layers use (offload/encodings/q4.py); norms stay bf16.

Why: beside a small quantized target a bf16 draft can take more RAM than the target's layers
(the demo pair: 75.5 MB of draft against 66.4 MB of q4 layers), so under a budget that holds
the pair the target streams part of its layers on every pass. The q4 copy of that draft takes
23.8 MB (layers 17.7, output rows 5.9), which leaves the whole demo target pinned at its
600 MB budget. The copy buys RAM; whether its agreement and per-token cost pay is measured
(docs/demo-draft.md, "The demo's default").

What is made, and where:
  - the layers: the draft packed into a store with its linear weights rounded to nearest
    (`specdec pack --quant q4`: group 32, bf16 scales), once per draft's files and int4
    layout, into the cache (`<cache>/drafts/`), and read whole on load;
  - the output layer: a draft that borrows its target's table copies its rows out of it, so
    they are encoded at load (~0.1 s for the demo's 16,384 rows), from whichever target it is
    paired with (loading.load_resident's `encode_head`).
The target verifies every drafted token, so the copy changes how often drafts are taken, never
what is generated. In float32 the q4 weights are dequantized per call (exact, slow), as every
q4 weight is.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from offload.encodings.from_float import QUANTIZERS, quantize_float
from offload.format import FORMAT_VERSION, is_store, open_store
from offload.pack import pack
from offload.repack import needs_repack, repack_store

from .cache_root import cache_root
from .drafts import Draft, ModelDraft
from .loading import LoadedModel, OpenedModel, load_resident, open_model
from .memory_plan import draft_bytes, streaming_plan

DRAFT_QUANTS = tuple(QUANTIZERS)  # q4, q8
DRAFT_STORE_VERSION = 1  # bump when what the cached copy holds changes


@dataclass(frozen=True)
class QuantizedDraft(Draft):
    """A model draft (a directory of safetensors, or a .gguf) run as its low-bit copy."""
    source: Path
    encoding: str = "q4"
    cache_dir: Path | None = None
    progress: bool = True
    store: OpenedModel | None = None  # the copy, once opened (packed on first use)
    modes = ModelDraft.modes

    def __post_init__(self):
        check_draft_quant(self.encoding)

    def describe(self) -> str:
        return f"draft {self.source} ({self.encoding} copy)"

    def label(self, model: LoadedModel) -> str:
        return f"{self.source} ({self.encoding} copy: {model.path})"

    def info(self, model, plan):
        if model is None:
            return None
        return {"kind": "model", "path": str(self.source), "encoding": self.encoding,
                "copy": str(model.path), "label": self.label(model)}

    def opened(self) -> "QuantizedDraft":
        if self.store is not None:
            return self
        path = quantized_store(Path(self.source), self.encoding, self.cache_dir, self.progress)
        return replace(self, store=open_model(path))

    def plan(self, store, args, ram, dtype, max_context):
        return streaming_plan(store, args, self.opened().store, ram, dtype, max_context,
                              head_encoding=self.encoding)

    def resident_model(self, target, dtype):
        store = self.opened().store
        model = load_resident(store, dtype, embeddings_from=target, kernels=target.model.kernels,
                              encode_head=partial(_encode, self.encoding))
        nbytes = draft_bytes(store, dtype, head_encoding=self.encoding)
        return replace(model, description=f"{Path(self.source).name} as {self.encoding} in RAM "
                                          f"({nbytes / 1e6:.1f} MB)")

    def streamed_model(self, target, store, weights, plan, dtype, cache_dir=None, progress=True):
        return self.resident_model(target, dtype)


def check_draft_quant(encoding) -> None:
    if encoding not in DRAFT_QUANTS:
        raise ValueError(f"draft quantization {encoding!r} is not supported: use "
                         f"{' or '.join(DRAFT_QUANTS)} (or none for the draft's own weights)")


def quantized(draft: Draft | None, encoding: str | None, cache_dir=None, progress: bool = True
              ) -> Draft | None:
    """`draft` as its `encoding` copy (None: as it is). Only a draft model has one."""
    if encoding is None or draft is None:
        return draft
    check_draft_quant(encoding)
    if isinstance(draft, QuantizedDraft):
        return replace(draft, encoding=encoding, store=None) if draft.encoding != encoding else draft
    if not isinstance(draft, ModelDraft):
        raise ValueError(f"draft_quant={encoding!r} makes a low-bit copy of a draft model, but "
                         f"{draft.describe()} has no weights of its own; leave draft_quant out.")
    return QuantizedDraft(draft.path, encoding, cache_dir, progress)


def quantized_store(source: Path, encoding: str, cache_dir=None, progress: bool = True) -> Path:
    """The draft `source` packed with its linear weights in `encoding`, in the cache: packed on
    first use, repacked once if the cache was made on a CPU with another int4 layout. The
    folder name carries the source files' identity (path, size, mtime), so a retrained draft
    gets a new copy."""
    out = quantized_store_path(source, encoding, cache_dir)
    if not is_store(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        pack(source, out, progress=progress, overwrite=True, quant=encoding)  # atomic (rename)
    elif needs_repack(open_store(out)):
        repack_store(out, progress=progress)
    return out


def quantized_store_path(source: Path, encoding: str, cache_dir=None) -> Path:
    source = source.expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such draft; give a draft directory (config.json "
                                "and *.safetensors) or a .gguf file.")
    if is_store(source):
        raise ValueError(f"{source} is a packed store: its encoding was chosen when it was "
                         "packed; pass it as the draft without draft_quant, or give the draft's "
                         "checkpoint (directory or .gguf) to quantize.")
    files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else [source]
    ident = "|".join(f"{p}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files)
    ident += f"|{encoding}|v{FORMAT_VERSION}|d{DRAFT_STORE_VERSION}"
    key = hashlib.sha1(ident.encode()).hexdigest()[:12]
    return cache_root(cache_dir) / "drafts" / f"{source.stem}-{encoding}-{key}"


def _encode(encoding: str, weight):
    return quantize_float(weight, encoding).value
