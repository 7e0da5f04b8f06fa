"""How much RAM a streamed target leaves for what: the memory plan beside a draft model."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from offload.budget import DEFAULT_OVERHEAD, plan_memory
from offload.encodings.from_float import encoded_nbytes
from offload.expert_stream import default_expert_slots
from offload.format import open_store

from .cache import KVCache
from .compute.head import kernel_head_added_nbytes
from .config import ModelArgs
from .loading import OpenedModel, open_model, parse_dtype
from .weights import model_shape

FLOAT_DTYPES = ("bfloat16", "float32")


def streaming_plan(store, args: ModelArgs, draft, ram, dtype: torch.dtype, max_context: int,
                   head_encoding: str | None = None):
    """The MemoryPlan for streaming `store` (config `args`) beside `draft` (a path, an
    OpenedModel, or None) under `ram`: what load() runs under, and what benchmarks cap other
    tools at. `head_encoding`: a partial output vocabulary's copied rows are held in it (q4, q8:
    a low-bit draft, specdec/quantized_draft.py)."""
    drf = open_model(draft) if draft is not None and not isinstance(draft, OpenedModel) else draft
    store_dtype = store.dtype and parse_dtype(store.dtype)
    # A draft borrowing the target's embedding table shares it when no dtype change copies it.
    shared = drf is not None and store_dtype == dtype and drf.borrows_embeddings
    return plan_memory(store, ram, draft_bytes=draft_bytes(drf, dtype, shared, head_encoding),
                       kv_bytes_per_token_target=kv_per_token(args, dtype),
                       kv_bytes_per_token_draft=kv_per_token(drf.args, dtype) if drf else 0,
                       max_context=max_context, expert_slots=default_expert_slots(store),
                       overhead_bytes=runtime_bytes(store, dtype))


def runtime_bytes(store, dtype: torch.dtype) -> int:
    """The runtime's RAM beside the weights, caches and buffers: Python, torch and the
    activations (offload.budget.DEFAULT_OVERHEAD), and what the output layer's kernel copy
    of its scales adds to them where the model makes one (specdec/compute/head.py)."""
    return DEFAULT_OVERHEAD + kernel_head_added_nbytes(store, dtype)


def kv_per_token(args: ModelArgs, dtype: torch.dtype) -> int:
    return KVCache.nbytes_for(args.num_layers, args.num_kv_heads, args.head_dim, 1, dtype)


def draft_bytes(drf: OpenedModel | None, dtype: torch.dtype, shared_embeddings: bool = False,
                head_encoding: str | None = None) -> int:
    """RAM the draft's weights take in `dtype`, from its parameter count (offload/shapes.py).
    A table borrowed from the target counts only when a dtype change copies it (not
    `shared_embeddings`). A partial output vocabulary's rows are a copy, tied or not, held in
    `head_encoding` if given (loading.load_resident's encode_head)."""
    if drf is None:
        return 0
    if drf.ckpt.kind == "store":
        head_copy = 0  # a partial output layer without its own rows in the store is a copy
        rows = drf.output_rows()
        if drf.ckpt.tensor_shape("lm_head.weight") is None and rows < drf.args.vocab_size:
            shape = (rows, drf.args.hidden_size)
            head_copy = (encoded_nbytes(shape, head_encoding) if head_encoding
                         else math.prod(shape) * dtype.itemsize)
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
