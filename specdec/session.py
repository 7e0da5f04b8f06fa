"""load(): put a target (in RAM or streamed from a store) and an optional draft together."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from offload.budget import plan_memory
from offload.expert_stream import default_expert_slots
from offload.format import (FORMAT_VERSION, MANIFEST, REPACK, StoreError, is_store,
                            looks_like_store, open_store)
from offload.pack import pack
from offload.prefetch import StreamedWeights
from offload.repack import needs_repack, repack_store

from .api import SpecDecoder
from .cache import KVCache
from .cache_root import cache_root
from .config import ModelArgs
from .demo import demo_pair
from .loading import LoadedModel, OpenedModel, load_resident, open_model, parse_dtype
from .families import build_model
from . import self_draft
from .compute.choice import kernel_policy
from .compute.kernels import Policy
from .lookup import is_lookup
from .weights import ResidentWeights, WeightsError, check_complete, check_layer_count, model_shape

DEFAULT_MAX_CONTEXT = 4096
DEFAULT_SPECULATION = "chain"
FLOAT_DTYPES = ("bfloat16", "float32")


def load(target: str | Path | None = None, draft: str | Path | None = None, ram=None,
         dtype="bfloat16", max_context: int | None = None, k: int | None = None,
         cache_dir: str | Path | None = None, progress: bool = True, speculation: str | None = None,
         tree_nodes: int | None = None, tree_width: int = 4, kernels: str | None = None,
         lookup_branches: int | None = None) -> SpecDecoder:
    """A decoder for `target`, with `draft` proposing tokens (None: plain decoding).

    target: a Hugging Face directory (safetensors), a .gguf file, or a packed store.
    draft: a draft model (directory, .gguf or store), "self" (the target drafts for itself:
        4-bit substitutes of its streamed layers in RAM, its pinned layers shared; see
        specdec/self_draft.py), "lookup" (no draft model: continuations of the context's own
        n-grams, for replies that quote, rewrite or edit their prompt; specdec/lookup.py), or
        None (plain decoding).
        A store always streams. A checkpoint loads into RAM, unless `ram` is given: then it
        is packed into `cache_dir` on first use and streamed under that budget.
        No target at all: the offline demo pair (defaults from specdec.demo.demo_pair).
    ram: RAM budget ("4GB", "800MB", bytes). For a store without one, a budget is derived
        from the RAM available now (the plan says which).
    dtype: "bfloat16" (default) or "float32" (exact comparisons).
    max_context: KV cache length (default: the model's, capped at 4096).
    k: fixed number of drafted tokens per pass in chain mode, or of lookup tokens with
        draft="lookup" (default: adaptive).
    speculation: "chain" (k drafts in a row, rejection sampling; the default: it was as fast
        or faster on the demo pair, README Benchmarks), "tree" (a best-first draft tree
        verified in one pass; see specdec/speculate/tree.py; `k` does not apply to it) or
        "overlap" (a tree that outlives the pass and grows while the target's layers stream
        from disk; specdec/speculate/overlap.py).
    tree_nodes: fixed tree size (default: sized per pass by the measured cost model, <= 64).
    tree_width: children offered per tree node.
    lookup_branches: at most this many nodes of prompt-lookup branches (continuations of the
        context's own n-grams) added to each tree, when they pay (specdec/speculate/
        lookup_branches.py). Default: 8 on an adaptive tree, none on a fixed-size tree; 0: none.
    cache_dir: where packed stores go (default $SPECDEC_CACHE or ~/.cache/specdec).
    kernels: "auto" (default, or $SPECDEC_KERNELS): the fastest matmul path per weight kind
        and token count on this CPU, timed once per machine (~5 s, in a child process) and
        cached in cache_dir (docs/kernels.md); "reference": F.linear everywhere, as
        transformers computes. The models of this decoder use it; another decoder has its own.
    """
    policy = kernel_policy(kernels, cache_root(cache_dir), progress)
    # Chain unless asked otherwise, whether or not `k` is given (`k` sizes chain drafts only).
    spec = dict(speculation=DEFAULT_SPECULATION if speculation is None else speculation,
                tree_nodes=tree_nodes, tree_width=tree_width, lookup_branches=lookup_branches)
    torch_dtype = parse_dtype(dtype)
    pack_dtype = dtype
    if target is None:  # the offline demo pair: its defaults, then the same steps as any target
        demo = demo_pair(draft, ram, max_context, cache_dir)
        target, draft, ram, max_context = demo.target, demo.draft, demo.ram, demo.max_context
        pack_dtype = demo.pack_dtype
    if is_lookup(draft):  # no draft model: the strategy drafts from the context's n-grams
        spec["speculation"] = _lookup_speculation(speculation, tree_nodes)
        draft = None
    # 1. resolve the sources; each config (and the draft's sidecar) is read once, here
    target = Path(target).expanduser()
    if not is_store(target) and looks_like_store(target):
        open_store(target)  # a damaged store: raises the store's own error, naming the fix
    drf = draft if self_draft.is_self(draft) else open_model(draft) if draft is not None else None
    if not is_store(target) and ram is None:  # 2. no budget: everything in RAM
        tgt = load_resident(target, torch_dtype, kernels=policy)
        if self_draft.is_self(drf):
            drf_model = _resident_self_draft(tgt, torch_dtype)
        else:
            drf_model = load_resident(drf, torch_dtype, embeddings_from=tgt, kernels=policy) if drf else None
        return SpecDecoder(tgt, drf_model, _context(max_context, tgt.args), k=k, **spec)
    streamed = dict(cache_dir=cache_dir, progress=progress, kernels=policy)
    if is_store(target):
        return _load_streamed(target, drf, ram, torch_dtype, max_context, k, spec, **streamed)
    store_path = packed_store(target, pack_dtype, cache_dir, progress)
    origin = f"packed from {target.name}" + (" in its own quantization" if target.suffix == ".gguf" else "")
    return _load_streamed(store_path, drf, ram, torch_dtype, max_context, k, spec, origin, **streamed)


def _lookup_speculation(speculation: str | None, tree_nodes: int | None) -> str:
    """draft="lookup" verifies its own n-gram candidates; draft-model settings do not apply."""
    if speculation not in (None, "chain", "lookup"):
        raise ValueError(f"speculation={speculation!r} needs a draft model; draft='lookup' drafts "
                         "from the context's n-grams. Drop the speculation setting, or pass a "
                         "draft model for tree/overlap.")
    if tree_nodes is not None:
        raise ValueError("tree_nodes sizes a draft model's tree; with draft='lookup' use k for "
                         "a fixed number of lookup tokens per pass (default: sized by the cost model).")
    return "lookup"


def _load_streamed(store_path: Path, drf: OpenedModel | str | None, ram, dtype: torch.dtype,
                   max_context, k, spec, origin: str = "", cache_dir=None, progress: bool = True,
                   kernels: Policy | None = None) -> SpecDecoder:
    """Open the store, plan memory, build the weight source and the models, then the decoder."""
    store = open_store(store_path)
    args = ModelArgs.from_hf(store.config, source=f"{store_path}/{MANIFEST}",
                             fix=f"The store is damaged. {REPACK}")
    check_store_matches(store, args)
    ctx = _context(max_context, args)
    if self_draft.is_self(drf):
        self_draft.check_target(store)
        plan = self_draft.plan_self_draft(store, ram, _kv_per_token(args, dtype), ctx)
    else:
        plan = streaming_plan(store, args, drf, ram, dtype, ctx)
    store_dtype = store.dtype and parse_dtype(store.dtype)
    weights = StreamedWeights(store, pinned=plan.pinned, ring_size=max(plan.ring_size, 1),
                              dtype=dtype if store_dtype != dtype else None,
                              expert_slots=plan.expert_slots or None, pin_experts=plan.experts_pinned)
    try:
        tok = (str(store.tokenizer_dir), None) if store.tokenizer_dir else None
        tgt = LoadedModel(store_path, args, build_model(args, weights, dtype, kernels), store.config,
                          store.generation_config, tok,
                          f"{store_path.name} streamed from disk ({origin + '; ' if origin else ''}"
                          f"weights: {store.encoding_summary()})")
        if self_draft.is_self(drf):
            layers = self_draft.streamed_self_draft_layers(store, weights.pinned_tensors,
                                                           cache_dir, progress)
            drf_model = _self_draft_model(tgt, ResidentWeights(weights.resident, layers, dtype),
                                          self_draft.describe(plan, args.num_layers))
        else:
            drf_model = load_resident(drf, dtype, embeddings_from=tgt, kernels=kernels) if drf else None
        return SpecDecoder(tgt, drf_model, ctx, k=k, bytes_read=lambda: weights.stats.bytes_read,
                           plan=plan, closer=weights.close, **spec)
    except BaseException:
        weights.close()
        raise


def _resident_self_draft(tgt: LoadedModel, dtype: torch.dtype) -> LoadedModel:
    weights = tgt.model.weights
    layers = self_draft.resident_self_draft_layers(list(weights.layers()))
    return _self_draft_model(tgt, ResidentWeights(weights.resident, layers, dtype),
                             self_draft.describe(None, tgt.args.num_layers))


def _self_draft_model(tgt: LoadedModel, weights, description: str) -> LoadedModel:
    """The target's own config and tokenizer over the self-draft's weights."""
    return LoadedModel(tgt.path, tgt.args, build_model(tgt.args, weights, tgt.model.dtype, tgt.model.kernels),
                       tgt.config, tgt.generation_config, tgt.tokenizer_source, description)


def check_store_matches(store, args: ModelArgs) -> None:
    """The store's tensors (from its manifest, no reads) are the ones its config implies."""
    source = str(store.path / MANIFEST)
    try:
        check_layer_count(store.num_layers, args, source)
        layers = [store.all_layer_tensors(i) for i in range(store.num_layers)]
        check_complete(store.resident_meta.tensors, layers, args, source)
    except WeightsError as e:
        raise StoreError(f"{e} The store is damaged or was packed from a broken checkpoint. "
                         f"{REPACK}") from e


def streaming_plan(store, args: ModelArgs, draft, ram, dtype: torch.dtype, max_context: int):
    """The MemoryPlan for streaming `store` (config `args`) beside `draft` (a path, an
    OpenedModel, or None) under `ram`: what load() runs under, and what benchmarks cap other
    tools at."""
    drf = open_model(draft) if draft is not None and not isinstance(draft, OpenedModel) else draft
    store_dtype = store.dtype and parse_dtype(store.dtype)
    # A draft borrowing the target's embedding table shares it when no dtype change copies it.
    shared = drf is not None and store_dtype == dtype and drf.borrows_embeddings
    return plan_memory(store, ram, draft_bytes=_draft_bytes(drf, dtype, shared),
                       kv_bytes_per_token_target=_kv_per_token(args, dtype),
                       kv_bytes_per_token_draft=_kv_per_token(drf.args, dtype) if drf else 0,
                       max_context=max_context, expert_slots=default_expert_slots(store))


def packed_store_path(src: Path, dtype, cache_dir, quant: str | None = None) -> Path:
    """Where the cache keeps checkpoint `src`'s store. The name carries the source's identity
    (path, size, mtime), the store format version and `quant`, so an updated checkpoint or
    format re-packs."""
    root = cache_root(cache_dir)
    src = src.resolve()
    stat = src.stat()
    ident = f"{src}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}|v{FORMAT_VERSION}|{quant}"
    key = hashlib.sha1(ident.encode()).hexdigest()[:12]
    return root / "stores" / f"{src.stem}-{key}"


def packed_store(src: Path, dtype, cache_dir, progress: bool, quant: str | None = None) -> Path:
    """The store for checkpoint `src` in the cache, packing it on first use (a GGUF keeps its
    own quantization; `quant` as for `specdec pack`, e.g. "bf16" for a plain store to compare
    with). A cached store packed on a machine with another int4 layout (a shared cache) is
    repacked once."""
    out = packed_store_path(src, dtype, cache_dir, quant)
    if not is_store(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        pack(src, out, dtype=str(dtype).replace("torch.", ""), progress=progress, overwrite=True,
             quant=quant)
    elif needs_repack(open_store(out)):
        repack_store(out, progress=progress)
    return out


def _context(max_context: int | None, args: ModelArgs) -> int:
    if max_context is None:
        return min(args.max_position_embeddings, DEFAULT_MAX_CONTEXT)
    if not isinstance(max_context, int) or max_context < 2:
        raise ValueError(f"max_context must be an integer >= 2, got {max_context!r}")
    return max_context


def _kv_per_token(args: ModelArgs, dtype: torch.dtype) -> int:
    return KVCache.nbytes_for(args.num_layers, args.num_kv_heads, args.head_dim, 1, dtype)


def _draft_bytes(drf: OpenedModel | None, dtype: torch.dtype, shared_embeddings: bool = False
                 ) -> int:
    """RAM the draft's weights take in `dtype`, from its parameter count (offload/shapes.py).
    A table borrowed from the target counts only when a dtype change copies it (not
    `shared_embeddings`). A partial output vocabulary's rows are a copy, tied or not."""
    if drf is None:
        return 0
    if drf.ckpt.kind == "store":
        head_copy = 0  # a partial output layer taken from the target's table is a copy
        if drf.borrows_embeddings and drf.ckpt.tensor_shape("lm_head.weight") is None:
            rows = drf.output_rows()
            head_copy = rows * drf.args.hidden_size * dtype.itemsize if rows < drf.args.vocab_size else 0
        return _store_draft_bytes(drf.ckpt.path, dtype) + head_copy
    params = model_shape(drf.args).params(drf.output_rows(), embeddings=not shared_embeddings)
    return params * torch.empty((), dtype=dtype).element_size()


def _store_draft_bytes(path: Path, dtype: torch.dtype) -> int:
    """A store loaded whole as the draft: its weight files as they are on disk (quantized
    bytes stay quantized), plus a float32 copy of its plain float tensors when the compute
    dtype widens them."""
    store = open_store(path)
    plain = sum(n for name, n in store.encodings().items() if name in FLOAT_DTYPES)
    store_dtype = parse_dtype(store.dtype) if store.dtype else dtype
    widened = plain * (dtype.itemsize // store_dtype.itemsize) if dtype != store_dtype else 0
    return store.weights_nbytes + widened
