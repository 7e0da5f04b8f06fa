"""draft="self": the target drafts for itself, with its streamed layers replaced by 4-bit
substitutes kept in RAM (SubSpec-style; no second model, no training).

Why it works here: a streamed target pass costs a read of every streamed layer from disk,
while a 4-bit copy of those layers in RAM costs a compute pass only, and at one token the
int4 kernel takes ~0.2x of the bf16 matmul's time (offload/encodings/q4.py). A quantized
copy agrees with its original far more often than a separately distilled small model.

What the draft is made of:
  - the target's resident tensors (embeddings, final norm, output layer): shared, no copy;
  - every pinned target layer: shared as it is (the same tensors the target uses);
  - every streamed layer: a substitute, its 2-D weights quantized to q4 (round to nearest,
    group 32, `from_float.quantize_float`), norms and biases copied. Substitutes are made
    once per store and machine into the cache (`<cache>/substitutes/`), with a progress bar,
    and read back on later loads: nothing is quantized per pass.

The memory plan: each substitute costs ~0.31x of its layer, and a pinned layer needs no
substitute, so pinning trades 1 layer of RAM for 0.31 layer of substitute plus the layer's
read per pass. `plan_self_draft` pins as many leading layers as the budget holds with the
substitutes of the others beside them (a fixed point: every pin frees a substitute).

A target that is already quantized (a q4/q8 store, e.g. from a GGUF) is refused: its 4-bit
copy would be as large as the target itself, so RAM that holds the copy holds the target,
and pinning it outright beats drafting from a copy; torch's CPU build has no faster kernel
below 4 bits to make a smaller copy with. The error says what to do instead.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from offload.atomic import replacing
from offload.budget import DEFAULT_OVERHEAD, MemoryPlan, plan_memory
from offload.encodings import decode, layout_fingerprint
from offload.encodings.from_float import encoded_nbytes, quantize_float
from offload.reader import read_tensors

from .cache_root import cache_root

ENCODING = "q4"
SUBSTITUTE_VERSION = 1  # bump when the substitutes' contents change


class SelfDraftError(ValueError):
    """draft="self" cannot be used with this target; the message says what to do instead."""


# -- sizes and the plan ---------------------------------------------------------------------
def substitute_nbytes(tensors: dict) -> int:
    """Bytes a layer's substitute takes, from the store's tensor metadata (no reads)."""
    return sum(encoded_nbytes(tuple(meta.shape), ENCODING) for meta in tensors.values())


def check_target(store) -> None:
    """Refuse a target whose layers are already quantized (see the module docstring), and a
    mixture-of-experts target (its 4-bit substitutes would need every expert in RAM)."""
    if store.has_experts:
        raise SelfDraftError(f"{store.path}: a mixture-of-experts target cannot draft for itself "
                             "(a 4-bit copy of every expert would not fit where the target does not). "
                             "Use a separate small draft model (--draft DIR) or draft='lookup'.")
    for i in range(store.num_layers):
        encoded = sorted({m.encoding.get("encoding", "?") for m in store.layer_tensors(i).values()
                          if getattr(m, "encoding", None)})
        if encoded:
            raise SelfDraftError(
                f"{store.path}: the target's layers are already quantized ({', '.join(encoded)}), "
                "so a 4-bit copy to draft with would be as large and as slow as the target itself. "
                "If the model fits in RAM, give a larger --ram to pin it; otherwise use a separate "
                "small draft model (--draft DIR), or pack the target in bf16 "
                "(`specdec pack SRC OUT --quant bf16`) to draft from its 4-bit copy.")


def plan_self_draft(store, ram, kv_bytes_per_token: int, max_context: int,
                    overhead_bytes: int = DEFAULT_OVERHEAD) -> MemoryPlan:
    """The streaming plan with substitutes for the layers it does not pin. The draft's KV
    cache has the target's shape. Raises BudgetError (with the minimum) when even streaming
    every layer beside all substitutes does not fit."""
    subs = [substitute_nbytes(store.layer_tensors(i)) for i in range(store.num_layers)]
    pinned = 0
    while True:
        plan = plan_memory(store, ram, draft_bytes=sum(subs[pinned:]),
                           kv_bytes_per_token_target=kv_bytes_per_token,
                           kv_bytes_per_token_draft=kv_bytes_per_token, max_context=max_context,
                           overhead_bytes=overhead_bytes)
        if len(plan.pinned) <= pinned:  # no more room freed: the plan is consistent
            return plan
        pinned = len(plan.pinned)


# -- building the substitutes ---------------------------------------------------------------
def substitute(layer: dict[str, torch.Tensor]) -> dict:
    """A layer's substitute: 2-D weights as q4 (bf16 where the kernel cannot take the shape),
    other tensors copied in bf16 (the layer's tensors may be views of a ring buffer)."""
    out = {}
    for name, t in layer.items():
        if t.dim() == 2 and t.is_floating_point():
            out[name] = quantize_float(t.float(), ENCODING).value
        else:
            out[name] = t.to(torch.bfloat16, copy=True) if t.is_floating_point() else t.clone()
    return out


class SubstituteCache:
    """Substitutes of one store's layers on disk, one safetensors file per layer. The folder
    name carries the store's identity (its manifest's path, size and mtime), the int4 layout
    of this machine and SUBSTITUTE_VERSION, so a repacked store or another CPU gets new ones."""

    def __init__(self, store, cache_dir=None):
        root = cache_root(cache_dir)
        manifest = store.path / "manifest.json"
        stat = manifest.stat()
        ident = (f"{manifest.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{ENCODING}|"
                 f"{layout_fingerprint()['layout']}|v{SUBSTITUTE_VERSION}")
        key = hashlib.sha1(ident.encode()).hexdigest()[:12]
        self.store = store
        self.dir = root / "substitutes" / f"{store.path.name}-{key}"

    def path(self, i: int) -> Path:
        return self.dir / f"layer_{i:05d}.safetensors"

    def missing(self, layers) -> list[int]:
        return [i for i in layers if not self.path(i).is_file()]

    def build(self, layers, progress: bool = True) -> None:
        """Make the substitutes not yet on disk: read each layer once, quantize, write."""
        todo = self.missing(layers)
        if not todo:
            return
        from tqdm import tqdm

        self.dir.mkdir(parents=True, exist_ok=True)
        for i in tqdm(todo, desc="4-bit substitutes for draft=self (once)", unit="layer",
                      disable=not progress):
            s = self.store
            tensors = read_tensors(s.layer_file(i), s.layer_tensors(i), s.layer_nbytes(i))
            _save_atomic(substitute(tensors), self.path(i))

    def load(self, i: int) -> dict:
        """Layer i's substitute, in RAM. A damaged file names itself and the fix."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        path = self.path(i)
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            flat = load_file(str(path))
            headers = json.loads(meta["specdec_headers"])
            return _unflatten(flat, headers)
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise SelfDraftError(f"{path}: a damaged draft=self substitute ({e}); delete "
                                 f"{self.dir} and load again to rebuild it.") from e


def _save_atomic(layer: dict, path: Path) -> None:
    from safetensors.torch import save_file

    flat, headers = {}, {}
    for name, value in layer.items():
        if isinstance(value, torch.Tensor):
            flat[name] = value.contiguous()
        else:
            headers[name] = value.header()
            for part, t in value.parts().items():
                flat[f"{name}::{part}"] = t.contiguous()
    with replacing(path) as tmp:
        save_file(flat, str(tmp), metadata={"specdec_headers": json.dumps(headers)})


def _unflatten(flat: dict[str, torch.Tensor], headers: dict) -> dict:
    layer = {name: t for name, t in flat.items() if "::" not in name}
    for name, header in headers.items():
        parts = {part: flat[f"{name}::{part}"] for part in header["parts"]}
        layer[name] = decode(header, parts)
    return layer


# -- the draft's weights ------------------------------------------------------------------
def streamed_self_draft_layers(store, target_pinned: dict[int, dict], cache_dir=None,
                               progress: bool = True) -> list[dict]:
    """One dict per layer for the draft: the target's own tensors where it pins the layer,
    the substitute elsewhere (built into the cache on first use)."""
    cache = SubstituteCache(store, cache_dir)
    streamed = [i for i in range(store.num_layers) if i not in target_pinned]
    cache.build(streamed, progress)
    return [target_pinned[i] if i in target_pinned else cache.load(i) for i in range(store.num_layers)]


def resident_self_draft_layers(layers) -> list[dict]:
    """A target held whole in RAM: every layer gets a substitute (sharing would make the draft
    the target itself); quantized at load, as the target was read at load."""
    return [substitute(layer) for layer in layers]


def layer_facts(plan: MemoryPlan | None, num_layers: int) -> dict:
    """describe()'s facts for programs: the layers shared with the target and those substituted."""
    shared = sorted(plan.pinned) if plan is not None else []
    substituted = sorted(plan.streamed) if plan is not None else list(range(num_layers))
    return {"encoding": ENCODING, "shared_layers": shared, "substituted_layers": substituted}


def describe(plan: MemoryPlan | None, num_layers: int) -> str:
    if plan is None:
        return f"self-draft: 4-bit copies of all {num_layers} target layers (in RAM)"
    return (f"self-draft: the target's {len(plan.pinned)} pinned layers shared, 4-bit substitutes "
            f"of its {len(plan.streamed)} streamed layers in RAM ({plan.draft_bytes / 1e6:.0f} MB)")
