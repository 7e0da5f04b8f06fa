"""Turn a path (Hugging Face dir, GGUF file, or packed store) into a runnable model.

Everything here reads files; nothing runs code from them (no pickles, no
trust_remote_code).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from offload.checkpoint import (DRAFT_SIDECAR, Checkpoint, CheckpointError, borrows_target_embeddings,
                                open_checkpoint)
from offload.gguf_hf_config import gguf_tokenizer

from .compute.kernels import Policy
from .config import ModelArgs
from .families import build_model
from .model import Transformer
from .weights import OUTPUT_IDS, ResidentWeights, checked_output_ids, split_state_dict, take_rows

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    if dtype in ("float16", "fp16", torch.float16):
        raise ValueError("dtype float16 is refused: fp16 arithmetic on CPU is ~100x slower than "
                         "bf16. Use dtype='bfloat16' (default) or 'float32'.")
    raise ValueError(f"unknown dtype {dtype!r}; use 'bfloat16' or 'float32'.")


@dataclass
class LoadedModel:
    path: Path
    args: ModelArgs
    model: Transformer
    config: dict
    generation_config: dict = field(default_factory=dict)
    tokenizer_source: tuple[str, str | None] | None = None  # (dir, gguf file)
    description: str = ""

    def eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.generation_config, self.config):
            value = source.get("eos_token_id")
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        return ids


@dataclass(frozen=True)
class OpenedModel:
    """A checkpoint opened once: its config parsed, its draft sidecar read, no weights read.
    The memory plan and the loader both work from it (the draft is never opened twice)."""
    ckpt: Checkpoint
    args: ModelArgs
    borrows_embeddings: bool  # DRAFT_SIDECAR: the embedding table comes from the target

    @property
    def path(self) -> Path:
        return self.ckpt.path

    def output_rows(self) -> int:
        """Rows of the output layer: a partial output vocabulary's size (from the safetensors
        header, no data read) if it has one, else the vocabulary's."""
        ids = self.ckpt.tensor_shape(OUTPUT_IDS)
        return ids[0] if ids else self.args.vocab_size


def open_model(path: str | Path) -> OpenedModel:
    ckpt = open_checkpoint(path)
    args = ModelArgs.from_hf(ckpt.config, source=str(_config_file(ckpt.path, ckpt.kind)))
    return OpenedModel(ckpt, args, ckpt.embeddings_from_target)


def load_resident(source: str | Path | OpenedModel, dtype: torch.dtype,
                  embeddings_from: LoadedModel | None = None, kernels: Policy | None = None,
                  encode_head: Callable[[torch.Tensor], object] | None = None) -> LoadedModel:
    """A checkpoint fully in RAM (`source`: a path, or a checkpoint already opened);
    `kernels`: its matmul paths (None: F.linear); `encode_head`: makes a partial vocabulary's
    copied output rows (float32 in, e.g. a q4 weight out: a low-bit draft,
    specdec/quantized_draft.py)."""
    opened = source if isinstance(source, OpenedModel) else open_model(source)
    ckpt, args = opened.ckpt, opened.args
    state = ckpt.state_dict()
    if opened.borrows_embeddings:
        state = _borrow_embeddings(state, ckpt.path, embeddings_from, args)
    if encode_head is not None:
        state = _encoded_head(state, args, encode_head)
    weights = ResidentWeights.from_state_dict(state, args, dtype, source=str(ckpt.path))
    del state
    return LoadedModel(ckpt.path, args, build_model(args, weights, dtype, kernels), ckpt.config,
                       ckpt.generation_config, _tokenizer_source(ckpt),
                       f"{ckpt.path.name} in RAM ({_mb(weights.nbytes)} MB)")


def _config_file(path: Path, kind: str) -> Path:
    return path if kind == "gguf" else path / ("manifest.json" if kind == "store" else "config.json")


def _tokenizer_source(ckpt) -> tuple[str, str | None] | None:
    directory, gguf = ckpt.tokenizer_source
    if gguf or any((Path(directory) / f).exists() for f in TOKENIZER_FILES):
        return directory, gguf
    return None


def wants_target_embeddings(path: Path) -> bool:
    return borrows_target_embeddings(Path(path))


def _borrow_embeddings(state: dict, path: Path, target: LoadedModel | None, args: ModelArgs) -> dict:
    if target is None:
        raise CheckpointError(f"{path}: this draft takes its embeddings from its target "
                              f"({DRAFT_SIDECAR}); load it together with a target.")
    resident = target.model.weights.resident
    embed = resident["model.embed_tokens.weight"]
    if tuple(embed.shape) != (args.vocab_size, args.hidden_size):
        raise CheckpointError(f"{path}: the target's embeddings have shape {tuple(embed.shape)} "
                              f"but the draft expects ({args.vocab_size}, {args.hidden_size}); "
                              "this draft was made for another target.")
    state = dict(state)
    state["model.embed_tokens.weight"] = embed
    if "lm_head.weight" not in state and not args.tie_word_embeddings:
        head = resident.get("lm_head.weight", embed)
        ids = state.get(OUTPUT_IDS)  # a partial output vocabulary takes only its rows
        if ids is not None:
            head = take_rows(head, checked_output_ids(ids, args))
        state["lm_head.weight"] = head
    return state


def _encoded_head(state: dict, args: ModelArgs, encode) -> dict:
    """A partial vocabulary's output rows (a copy made at load: of the target's head or table,
    or of the model's own tied table) as `encode` makes them. A whole-vocabulary head is the
    model's own (packed encoded already) or shared with the target, and stays as it is."""
    head, ids = state.get("lm_head.weight"), state.get(OUTPUT_IDS)
    if ids is None:
        return state
    if head is None:
        head = take_rows(state["model.embed_tokens.weight"], checked_output_ids(ids, args))
    if not isinstance(head, torch.Tensor):
        return state
    return {**state, "lm_head.weight": encode(head.float())}


def load_tokenizer(source: tuple[str, str | None] | None, config: dict | None = None):
    """`config`: the model's, as its checkpoint gave it: a GGUF's tokenizer then comes without
    transformers parsing the file's config again (offload.gguf_hf_config.gguf_tokenizer)."""
    if source is None:
        return None
    from transformers import AutoTokenizer

    directory, gguf = source
    if gguf:
        return gguf_tokenizer(directory, gguf, config)
    _refuse_custom_tokenizer_code(Path(directory))
    return AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def _refuse_custom_tokenizer_code(directory: Path) -> None:
    """A tokenizer_config.json whose auto_map names Python code: refuse clearly (transformers
    would say to pass trust_remote_code=True, which specdec never does)."""
    file = directory / "tokenizer_config.json"
    if not file.is_file():
        return
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}). Restore the file from the "
                              "original model download.") from e
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    if isinstance(auto_map, dict) and "AutoTokenizer" in auto_map:
        raise CheckpointError(
            f"{file}: the tokenizer needs custom Python code (auto_map -> "
            f"{auto_map['AutoTokenizer']!r}); specdec never runs code shipped with a model. Use a "
            "model with a standard tokenizer, or, if its tokenizer.json is standard, remove "
            "auto_map and tokenizer_class from tokenizer_config.json.")


def _mb(n: int) -> int:
    return round(n / 2**20)


__all__ = ["LoadedModel", "OpenedModel", "open_model", "load_resident", "load_tokenizer", "parse_dtype", "split_state_dict",
           "DRAFT_SIDECAR"]
