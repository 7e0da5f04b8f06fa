"""Open a source checkpoint: a Hugging Face safetensors directory or a GGUF file.

Gives the model's config as a plain dict and its tensors one at a time, so packing
can stream checkpoints larger than RAM. Pickled checkpoints (.bin/.pt/.pth/.ckpt)
are refused: unpickling runs arbitrary code, and we never do it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .expert_names import common_name
from .hf_config import text_decoder_config, text_tensor_name

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# A draft may ship without its embedding table and take the target's at load time (they
# share a vocabulary): this file in the draft's directory says so (a store: its manifest).
DRAFT_SIDECAR = "specdec_draft.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the fix."""


@dataclass
class Checkpoint:
    path: Path
    kind: str  # "safetensors", "gguf" or "store" (a packed store loaded whole, e.g. a draft)
    config: dict
    generation_config: dict = field(default_factory=dict)
    weight_files: list[Path] = field(default_factory=list)  # safetensors shards
    # A GGUF's gguf-py reader, parsed once by open_checkpoint for the config and handed to the
    # first tensor read (take_gguf_reader): it holds ~150 MB of metadata objects for a 100 MB
    # model, too much to keep beside a loaded draft.
    gguf_reader: object | None = field(default=None, repr=False, compare=False)

    @property
    def tokenizer_source(self) -> tuple[str, str | None]:
        """(directory, gguf file name or None) as AutoTokenizer.from_pretrained wants them."""
        if self.kind == "gguf":
            return str(self.path.parent), self.path.name
        if self.kind == "store":
            return str(self.path / "tokenizer"), None
        return str(self.path), None

    @property
    def embeddings_from_target(self) -> bool:
        """The checkpoint has no embedding table of its own: it takes its target's."""
        if self.kind == "store":
            return bool(self._store().embeddings_from_target)
        return borrows_target_embeddings(self.path)

    def _store(self):
        from .format import open_store

        return open_store(self.path)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (hf_name, tensor), one tensor in memory at a time for safetensors. A store's
        values may be encoded weights (offload/encodings), each file read once, whole."""
        if self.kind == "gguf":
            yield from _gguf_tensors(self.path, self.take_gguf_reader(), self.config)
            return
        if self.kind == "store":
            yield from _store_tensors(self._store())
            return
        from safetensors import SafetensorError, safe_open

        for file in self.weight_files:
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():
                        text_name = text_tensor_name(name)  # a multimodal checkpoint's text part
                        if text_name is not None:  # Mixtral's expert names: the common ones
                            yield common_name(text_name), f.get_tensor(name)
            except (OSError, RuntimeError, SafetensorError) as e:
                raise _unreadable(file, e) from e

    def take_gguf_reader(self):
        """A GGUF's reader: the one opening parsed, the first time (not kept after), else a
        fresh parse."""
        reader, self.gguf_reader = self.gguf_reader, None
        return reader if reader is not None else open_gguf_reader(self.path)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors())

    def tensor_shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of tensor `name` from the safetensors headers, reading no data; None when
        the checkpoint has no such tensor."""
        if self.kind == "gguf":
            return None  # GGUF files hold only the tensors transformers maps from llama.cpp names
        if self.kind == "store":
            store = self._store()
            for i, meta in enumerate([store.resident_meta] + [store.layer_meta(j) for j in
                                                              range(store.num_layers)]):
                prefix = "" if i == 0 else f"model.layers.{i - 1}."
                for rel, t in meta.tensors.items():
                    if prefix + rel == name:
                        return t.shape
            return None
        from safetensors import SafetensorError, safe_open

        for file in self.weight_files:
            try:
                with safe_open(str(file), framework="pt") as f:
                    if name in f.keys():
                        return tuple(f.get_slice(name).get_shape())
            except (OSError, RuntimeError, SafetensorError) as e:
                raise _unreadable(file, e) from e
        return None


def _unreadable(file: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"{file}: cannot read safetensors file ({e}). The file is truncated or "
                           "not safetensors; download or convert the checkpoint again.")


def open_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory. Pass a Hugging Face model "
                              "directory (config.json + *.safetensors), a .gguf file, or a packed store.")
    if path.is_file():
        if path.suffix == ".gguf":
            return _open_gguf(path)
        if path.suffix in PICKLE_SUFFIXES:
            raise _pickle_refused(path)
        raise CheckpointError(f"{path}: not a model. Pass a Hugging Face model directory, "
                              "a .gguf file, or a packed store directory.")
    return _open_hf_dir(path)


def _pickle_refused(file: Path) -> CheckpointError:
    return CheckpointError(
        f"{file}: pickled checkpoints are refused (loading one can run arbitrary code). "
        "Convert it to safetensors in a trusted environment "
        "(model.save_pretrained(dir, safe_serialization=True)) and pass that directory."
    )


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}). Restore the file from the "
                              "original model download.") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object. Restore the file from the "
                              "original model download.")
    return data


def borrows_target_embeddings(path: Path) -> bool:
    sidecar = path / DRAFT_SIDECAR if path.is_dir() else None
    if sidecar is None or not sidecar.exists():
        return False
    try:
        return bool(json.loads(sidecar.read_text()).get("embeddings_from_target"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{sidecar}: not valid JSON ({e}); restore it or delete it.") from e


def _open_store(path: Path) -> Checkpoint:
    from .format import check_layout, open_store

    store = open_store(path)
    check_layout(store)
    return Checkpoint(path, "store", store.config, store.generation_config)


def _store_tensors(store) -> Iterator[tuple[str, object]]:
    """Every tensor of a store, read whole into RAM (checksummed), by its HF name."""
    from .format import check_first_read
    from .reader import read_tensors

    for index, meta in store.weight_files():
        views = read_tensors(store.path / meta.name, meta.tensors, meta.size,
                             check=lambda buf, name=meta.name: check_first_read(store, name, buf))
        for rel, value in views.items():
            yield (rel if index is None else f"model.layers.{index}.{rel}"), value


def _open_hf_dir(path: Path) -> Checkpoint:
    from .format import is_store

    if is_store(path):
        return _open_store(path)
    ggufs = sorted(path.glob("*.gguf"))
    config_file = path / "config.json"
    if not config_file.exists():
        if len(ggufs) == 1:
            return _open_gguf(ggufs[0])
        raise CheckpointError(f"{config_file}: missing. A Hugging Face model directory needs "
                              "config.json next to its *.safetensors files.")
    config = text_decoder_config(_read_json(config_file))
    gen_file = path / "generation_config.json"
    gen = _read_json(gen_file) if gen_file.exists() else {}
    return Checkpoint(path, "safetensors", config, gen, _safetensors_files(path))


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: has no weight_map. Restore it from the original download.")
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{missing[0]}: missing shard listed in {index.name}. "
                                  "Download the missing shard(s) again.")
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = [f for f in sorted(path.iterdir()) if f.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise _pickle_refused(pickles[0])
    raise CheckpointError(f"{path}: no *.safetensors weights found. Download the safetensors "
                          "version of the model into this directory.")


def _open_gguf(file: Path) -> Checkpoint:
    from .gguf_hf_config import hf_config

    reader = open_gguf_reader(file)
    try:
        config = hf_config(reader, str(file.parent))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise CheckpointError(f"{file}: cannot read GGUF ({e}). The file is corrupt or of an "
                              "unsupported architecture; download it again.") from e
    config = _gguf_family_config(file, reader, config)
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id") if config.get(k) is not None}
    return Checkpoint(file, "gguf", config, gen, gguf_reader=reader)


def open_gguf_reader(file: Path):
    """gguf-py's reader over `file` (memory-mapped; parsing its metadata takes seconds for a
    100 MB model: done once per load)."""
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise CheckpointError(f"{file}: reading GGUF needs the `gguf` package: "
                              "pip install 'specdec[demo]' (or pip install gguf).") from e
    try:
        return GGUFReader(str(file))
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise CheckpointError(f"{file}: cannot read GGUF ({e}). The file is corrupt or truncated; "
                              "download it again.") from e


def _gguf_family_config(file: Path, reader, config: dict) -> dict:
    """Gemma 2/3 and Phi-3 settings transformers' GGUF reader leaves out (offload/gguf_config.py)."""
    from .gguf_config import GGUFConfigError, family_config

    field = reader.get_field("general.architecture")
    try:
        return family_config(reader, field.contents() if field is not None else "", config)
    except (GGUFConfigError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot read its model settings ({e}). The file is corrupt "
                              "or of an unsupported variant; download it again.") from e


def _gguf_tensors(file: Path, reader, config: dict) -> Iterator[tuple[str, torch.Tensor]]:
    # Dequantized to float32 with gguf-py's reference (what transformers' GGUF loader
    # computes), renamed, and a mixture of experts' merged experts split (offload/gguf_source).
    from .encodings.gguf_types import UnsupportedGGUFType
    from .gguf_source import GGUFSourceError, gguf_tensors

    try:
        yield from gguf_tensors(reader, config, "bf16", note=lambda message: None)
    except (UnsupportedGGUFType, GGUFSourceError) as e:
        raise CheckpointError(f"{file}: {e}") from e
