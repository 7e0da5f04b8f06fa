"""load(): put a target (in RAM or streamed from a store) and an optional draft together."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from offload.format import (FORMAT_VERSION, MANIFEST, REPACK, StoreError, is_store,
                            looks_like_store, open_store)
from offload.expert_guess import DEFAULT_GUESS, router_copy_nbytes
from offload.pack import pack
from offload.prefetch import StreamedWeights
from offload.repack import needs_repack, repack_store

from .api import SpecDecoder
from .cache_root import cache_root
from .compute.choice import kernel_policy
from .compute.kernels import Policy
from .config import ModelArgs
from .drafts import Draft
from .families import build_model
from .load_settings import LoadSettings
from .loading import LoadedModel, load_resident, parse_dtype
from .speculate.registry import Speculation
from .weights import WeightsError, check_complete, check_layer_count

DEFAULT_MAX_CONTEXT = 4096


def load(target: str | Path | None = None, draft: str | Path | Draft | None = None, ram=None,
         dtype="bfloat16", max_context: int | None = None, k: int | None = None,
         cache_dir: str | Path | None = None, progress: bool = True, speculation: str | None = None,
         tree_nodes: int | None = None, tree_width: int = 4, kernels: str | None = None,
         lookup_branches: int | None = None, expert_prefetch: bool | str = True,
         expert_reads: str = "direct", draft_quant: str | None = None) -> SpecDecoder:
    """A decoder for `target`, with `draft` proposing tokens (None: plain decoding).

    target: a Hugging Face directory (safetensors), a .gguf file, or a packed store.
    draft: a draft model (directory, .gguf or store), "self" (the target drafts for itself:
        4-bit substitutes of its streamed layers in RAM, its pinned layers shared; see
        specdec/self_draft.py), "lookup" (no draft model: continuations of the context's own
        n-grams, for replies that quote, rewrite or edit their prompt; specdec/lookup.py), a
        specdec.drafts.Draft, or None (plain decoding).
        A store always streams. A checkpoint loads into RAM, unless `ram` is given: then it
        is packed into `cache_dir` on first use and streamed under that budget.
        No target at all: the offline demo pair (defaults from specdec.demo.demo_pair:
        plain decoding unless speculation, k or tree_nodes asks for its draft model).
    ram: RAM budget ("4GB", "800MB", bytes). For a store without one, a budget is derived
        from the RAM available now (the plan says which).
    dtype: "bfloat16" (default) or "float32" (exact comparisons).
    max_context: KV cache length (default: the model's, capped at 4096).
    k: fixed number of drafted tokens per pass in chain mode, or of lookup tokens with
        draft="lookup" (default: adaptive).
    speculation: "chain" (k drafts in a row, rejection sampling; the default: it was as fast
        or faster on the demo pair, docs/demo-draft.md), "tree" (a best-first draft tree
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
    expert_prefetch: a mixture-of-experts target streamed by expert reads the next layer's
        guessed experts while a layer computes: "next-router" (the next layer's router applied
        to this layer's residual; True, the default, means it), "previous-pass" (those the
        previous pass's last token routed to) or False (none). The output never depends on it;
        the default is what measured fastest (docs/moe.md: 1.09-1.72x plain's decode on the
        30B-A3B-shaped bench, AVX512 (Zen 4), 2026-12-06).
    expert_reads: "direct" (default: O_DIRECT into expert buffers, the budget's leftover an LRU
        expert cache) or "page-cache" (buffered reads, no expert cache of its own: the kernel's
        page cache keeps the hot experts within the process's memory limit). For comparisons.
    draft_quant: "q4" or "q8": the draft model runs as its low-bit copy (its linear weights
        and output layer quantized, packed once into cache_dir; specdec/quantized_draft.py):
        ~0.31x (q4) of its bf16 RAM, so more of a streamed target stays pinned. With no target
        it brings the demo's draft, as speculation does. None: the draft's own weights.
    """
    return open_decoder(LoadSettings(
        target=target, draft=draft, ram=ram, dtype=dtype, max_context=max_context, k=k,
        cache_dir=cache_dir, progress=progress, speculation=speculation, tree_nodes=tree_nodes,
        tree_width=tree_width, kernels=kernels, lookup_branches=lookup_branches,
        expert_prefetch=expert_prefetch, expert_reads=expert_reads, draft_quant=draft_quant))


def open_decoder(settings: LoadSettings) -> SpecDecoder:
    """The decoder for checked `settings` (what load() builds from its keywords)."""
    policy = kernel_policy(settings.kernels, cache_root(settings.cache_dir), settings.progress)
    s = settings.with_demo_defaults()  # no target: the demo's, then the same steps as any
    dtype = parse_dtype(s.dtype)
    spec = s.resolved_speculation()
    # 1. resolve the sources; each config (and the draft's sidecar) is read once, here
    if not is_store(s.target) and looks_like_store(s.target):
        open_store(s.target)  # a damaged store: raises the store's own error, naming the fix
    draft = s.draft.opened() if s.draft is not None else None
    if not is_store(s.target) and s.ram is None:  # 2. no budget: everything in RAM
        tgt = load_resident(s.target, dtype, kernels=policy)
        drf_model = draft.resident_model(tgt, dtype) if draft is not None else None
        return SpecDecoder(tgt, drf_model, _context(s.max_context, tgt.args), spec, draft_kind=draft)
    if is_store(s.target):
        return _load_streamed(s.target, draft, s, spec, policy)
    store_path = packed_store(s.target, s.pack_dtype or s.dtype, s.cache_dir, s.progress)
    origin = f"packed from {s.target.name}" + (" in its own quantization" if s.target.suffix == ".gguf" else "")
    return _load_streamed(store_path, draft, s, spec, policy, origin)


def _load_streamed(store_path: Path, draft: Draft | None, s: LoadSettings, spec: Speculation,
                   kernels: Policy, origin: str = "") -> SpecDecoder:
    """Open the store, plan memory, build the weight source and the models, then the decoder."""
    dtype = parse_dtype(s.dtype)
    store = open_store(store_path)
    args = ModelArgs.from_hf(store.config, source=f"{store_path}/{MANIFEST}",
                             fix=f"The store is damaged. {REPACK}")
    check_store_matches(store, args)
    ctx = _context(s.max_context, args)
    kind = draft or Draft()  # plain decoding plans as a draft that takes no RAM
    kind.check_store(store)
    plan = kind.plan(store, args, s.ram, dtype, ctx)
    if s.expert_reads == "page-cache":
        plan = plan.without_expert_cache()  # the RAM it would take is the page cache's
    guess, plan = _guess_and_plan(plan, store, s.expert_prefetch, dtype)
    store_dtype = store.dtype and parse_dtype(store.dtype)
    weights = StreamedWeights(store, pinned=plan.pinned, ring_size=max(plan.ring_size, 1),
                              dtype=dtype if store_dtype != dtype else None,
                              expert_slots=plan.expert_slots or None, pin_experts=plan.experts_pinned,
                              expert_prefetch=guess,
                              expert_page_cache=s.expert_reads == "page-cache")
    try:
        tok = (str(store.tokenizer_dir), None) if store.tokenizer_dir else None
        tgt = LoadedModel(store_path, args, build_model(args, weights, dtype, kernels), store.config,
                          store.generation_config, tok,
                          f"{store_path.name} streamed from disk ({origin + '; ' if origin else ''}"
                          f"weights: {store.encoding_summary()})")
        drf_model = kind.streamed_model(tgt, store, weights, plan, dtype, s.cache_dir, s.progress)
        return SpecDecoder(tgt, drf_model, ctx, spec, bytes_read=lambda: weights.stats.bytes_read,
                           plan=plan, closer=weights.close, source_counters=weights.stats.expert_counters,
                           draft_kind=draft)
    except BaseException:
        weights.close()
        raise


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


def _guess_and_plan(plan, store, guess, dtype: torch.dtype):
    """(the prefetch guess this load runs, its plan). The next-router guess keeps each streamed
    layer's router (and norm) in RAM: the plan gives that much of its expert cache up. Where
    the cache cannot, a guess the user named is an error (the plan says why), while the default
    (True) falls back to the previous-pass guess, which takes no RAM."""
    if not plan or not plan.expert_slots or (DEFAULT_GUESS if guess is True else guess) != "next-router":
        return guess, plan
    nbytes = router_copy_nbytes(store, plan.streamed, torch.empty((), dtype=dtype).element_size())
    try:
        return guess, plan.with_guess_bytes(nbytes, "the next-router prefetch guess (the streamed layers' routers)")
    except ValueError:
        if guess is not True:
            raise
        return "previous-pass", plan


def _context(max_context: int | None, args: ModelArgs) -> int:
    """The KV cache length: as given (LoadSettings checked it), else the model's, capped."""
    if max_context is None:
        return min(args.max_position_embeddings, DEFAULT_MAX_CONTEXT)
    return max_context
