"""Pack a Hugging Face safetensors directory or a GGUF file into a layer store.

Both are streamed one tensor at a time, so packing needs about one tensor of RAM, whatever
the model size. GGUF files are read with gguf-py's reader (offload/gguf_source.py) and keep
their own quantization by default (Q4_0/Q4_1/Q4_K -> q4, Q8_0/Q5_* -> q8 exactly; other types
converted with a printed note and error, see encodings/gguf_types.py). Safetensors weights
stay float unless `quant` asks for q4 or q8 (round-to-nearest of the 2-D linear weights,
encodings/from_float.py; norms and the embedding table stay plain).

Plain tensors are converted to the store dtype (bfloat16 by default: fp16 matmuls are ~100x
slower than bf16 on CPU); every tensor is appended, 4096-aligned, to its layer's file as it
arrives; shards that interleave layers are fine because every layer file stays open until the end.

Atomic: everything is written into `OUT.partial-<pid>`, fsynced, the manifest written
last, and only then renamed to OUT. An interrupted pack leaves at most a `.partial-*`
directory without a manifest, which `open_store` refuses; an error removes it, and so does
the next pack to the same OUT when the process that wrote it is gone (killed).
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import torch

from . import encodings
from .atomic import fsync_path
from .checkpoint import Checkpoint, CheckpointError, open_checkpoint
from .errors import InternalError
from .expert_names import split_expert_name
from .expert_pack import ExpertWriter, IncompleteExperts
from .format import (ALIGN, EXPERT_STORE_VERSION, FORMAT_NAME, FORMAT_VERSION, MANIFEST, RESIDENT_FILE,
                     TOKENIZER_DIR, TensorMeta, align_up, expert_file_name, file_sha256, is_store,
                     layer_file_name)
from .shapes import LM_HEAD, ModelShape, split_layer_name

DTYPE_ALIASES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "f32": "float32",
                 "float32": "float32"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "generation_config.json", "chat_template.jinja", "chat_template.json")
DISK_MARGIN = 64 << 20  # room for the manifest, tokenizer files and filesystem slack
QUANTS = ("q4", "q8", "bf16")  # `quant`; None = the source's own (GGUF) or bf16 (safetensors)
# Stored bits per weight of each quantization (q4: 4 + 32/32 scale bits at group 32; q8: two
# int4 planes, 8 + 2*32/64 at group 64), for the disk-space estimate only.
QUANT_BITS = {"q4": 5.0, "q8": 9.0}


class PackError(ValueError):
    """Packing failed; the message names the file and the fix. No store was left behind."""


def normalize_dtype(dtype: str | torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_ALIASES:
        raise PackError(f"dtype {dtype!r} is not supported for stores: use bfloat16 (bf16, the "
                        "default) or float32 (exact comparisons). float16 is refused: fp16 "
                        "matmuls are ~100x slower than bf16 on CPU.")
    return DTYPE_ALIASES[name]


def normalize_quant(quant: str | None) -> str | None:
    if quant is None:
        return None
    name = str(quant).lower()
    name = "bf16" if name in ("bfloat16", "none") else name
    if name not in QUANTS:
        raise PackError(f"quantization {quant!r} is not supported: use q4 (4-bit, ~0.31x the "
                        "bytes of bf16), q8 (8-bit) or bf16 (no quantization).")
    return name


def pack(src: str | Path, out: str | Path, dtype: str = "bfloat16", progress: bool = True,
         overwrite: bool = False, quant: str | None = None, note=None) -> Path:
    """Pack checkpoint `src` (HF safetensors dir or .gguf) into a store at `out`; return out.
    quant: None keeps a GGUF's own quantization (and leaves safetensors in `dtype`); "q4" or
    "q8" quantize the linear weights; "bf16" stores everything plain. `note(str)` receives
    what was done to tensors that were converted (default: printed). Runs on one torch thread
    (one_thread), the caller's setting restored after."""
    with one_thread():
        return _pack(src, out, dtype, progress, overwrite, quant, note)


@contextmanager
def one_thread():
    """torch on one intra-op thread inside the block, the caller's count restored after. A pack
    is many small tensor ops (each expert's blocks, each tensor's conversion) between reads and
    writes: a second thread mostly spins, and on a busy machine the spinning costs more than it
    gives. Measured on a 2-core AVX512 (Zen 4) machine at load ~8 (2026-12-06): a 0.5 GB MoE GGUF
    (30 layers of 8 experts) packed in 56-64 s on torch's default 2 threads, 20 s on one; the
    demo GGUF in 24 s vs 15 s, and requantized to q4 in 36-38 s vs 14-20 s. A repack (repack.py)
    is the same kind of work and uses it too. Not thread-safe (torch's count is the process's):
    pack before decoding on other threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pack(src, out, dtype, progress, overwrite, quant, note) -> Path:
    src, dtype, quant = Path(src).expanduser(), normalize_dtype(dtype), normalize_quant(quant)
    if is_store(src):
        raise PackError(f"{src}: is already a packed store; use it directly, or pass the original "
                        "Hugging Face directory or .gguf file to re-pack.")
    ckpt = open_checkpoint(src)
    estimate = estimate_store_bytes(ckpt, dtype, quant)
    # A float32 store is the exact one: its quantization scales are float32 too (bit-exact
    # against gguf-py's dequantization); bf16 scales are the kernel's fast path.
    scale_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
    tensors = _source_tensors(ckpt, quant, note or _print_note(progress), scale_dtype)
    extra = {"quant": quant or ("source" if ckpt.kind == "gguf" else dtype)}
    if ckpt.embeddings_from_target:
        extra["embeddings_from_target"] = True
    return write_store(ckpt.config, ckpt.generation_config, tensors, out, dtype,
                       estimate=estimate, progress=progress, overwrite=overwrite,
                       tokenizer=lambda d: copy_tokenizer(ckpt, d), source=str(src), extra=extra)


def _print_note(progress: bool):
    from tqdm import tqdm

    return tqdm.write if progress else print


def _source_tensors(ckpt: Checkpoint, quant: str | None, note,
                    scale_dtype: torch.dtype) -> Iterable[tuple[str, object]]:
    if ckpt.kind == "gguf":
        from .gguf_source import GGUFSourceError, gguf_tensors
        from .encodings.gguf_types import UnsupportedGGUFType

        try:
            yield from gguf_tensors(ckpt.take_gguf_reader(), ckpt.config, quant, note, scale_dtype)
        except (UnsupportedGGUFType, GGUFSourceError) as e:
            raise PackError(f"{ckpt.path}: {e}") from e
        return
    for name, tensor in ckpt.tensors():
        yield name, quantize_tensor(name, tensor, quant, note, scale_dtype)


def quantize_tensor(name: str, tensor: torch.Tensor, quant: str | None, note=print,
                    scale_dtype: torch.dtype = torch.bfloat16):
    """A safetensors tensor as stored: the linear weights quantized when asked, else as is."""
    if quant in (None, "bf16") or not is_linear_weight_name(name):
        return tensor
    from .encodings.from_float import quantize_float

    enc = quantize_float(tensor, quant, scale_dtype)
    if enc.note:
        note(f"{name}: {enc.note}")
    return enc.value


def is_linear_weight_name(name: str) -> bool:
    """The 2-D weights a matmul reads (the embedding table is looked up, not multiplied,
    unless tied: then it stays plain and serves as the output layer)."""
    return name.endswith("_proj.weight") or name == LM_HEAD


def write_store(config: dict, generation_config: dict, tensors: Iterable[tuple[str, torch.Tensor]],
                out: str | Path, dtype: str = "bfloat16", *, estimate: int | None = None,
                progress: bool = True, overwrite: bool = False,
                tokenizer: Callable[[Path], bool] | None = None, source: str = "",
                extra: dict | None = None) -> Path:
    """Write a store from (hf_name, tensor) pairs arriving in any order, one at a time.
    `tokenizer(dir)` may save tokenizer files into dir and returns whether it did."""
    out, dtype = Path(out).expanduser().absolute(), normalize_dtype(dtype)
    _check_out(out, overwrite)
    remove_stale_partials(out)
    if estimate is not None:
        _check_disk_space(out.parent, estimate)
    tmp = out.parent / f"{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        manifest = _write_contents(config, generation_config, tensors, tmp, dtype, estimate,
                                   progress, tokenizer,
                                   bool((extra or {}).get("embeddings_from_target")))
        manifest["source"] = source
        manifest.update(extra or {})
        _write_json_durable(tmp / MANIFEST, manifest)
        fsync_path(tmp)
        _replace_dir(tmp, out)
    except BaseException as e:  # incl. KeyboardInterrupt: never leave a half-written store
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise PackError(f"{out}: no space left on device while packing (about "
                            f"{_gb(estimate or 0)} needed). Free disk space or choose another "
                            "OUT; nothing was written.") from e
        raise
    return out


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove `OUT.partial-<pid>` directories left by packs that were killed (their process
    is gone); a pack still running keeps its own. Returns what was removed."""
    removed = []
    for tmp in out.parent.glob(f"{glob.escape(out.name)}.partial-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier attempt in this process: not in use now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PackError(f"{out}: exists and is not a directory. Choose another OUT path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PackError(f"{out}: exists and is not empty. Choose another OUT, or pass "
                        "--overwrite (overwrite=True) to replace it.")


def _check_disk_space(parent: Path, needed: int) -> None:
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < needed + DISK_MARGIN:
        raise PackError(f"{parent}: not enough free disk space to pack: about {_gb(needed)} "
                        f"needed, {_gb(free)} free. Free disk space or choose an OUT on "
                        "another disk.")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


class _FileWriter:
    """Appends tensors to one store file at 4096-aligned offsets, hashing as it goes."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.size = 0
        self.tensors: dict[str, TensorMeta] = {}
        self.taps: list = []  # extra hashes fed every byte written (an expert's extent checksum)

    def _pad_to(self, size: int) -> None:
        self._write(bytes(size - self.size))

    def add(self, name: str, tensor) -> None:
        """Append a plain tensor, or an encoded weight (its parts at `part_offsets`)."""
        if name in self.tensors:
            raise PackError(f"{self.path.name}: tensor {name} appears twice in the checkpoint; "
                            "the checkpoint is corrupt. Download it again.")
        self._pad_to(align_up(self.size))
        if not isinstance(tensor, torch.Tensor):
            self._add_encoded(name, tensor)
            return
        data = _tensor_bytes(tensor)
        self.tensors[name] = TensorMeta(name, str(tensor.dtype).removeprefix("torch."),
                                        tuple(tensor.shape), self.size, len(data))
        self._write(data)

    def _add_encoded(self, name: str, weight) -> None:
        header = weight.header()
        start, parts = self.size, weight.parts()
        for part, (offset, nbytes) in encodings.part_offsets(header).items():
            self._pad_to(start + offset)
            data = _tensor_bytes(parts[part])
            if len(data) != nbytes:
                raise InternalError(f"{name}: part {part} has {len(data)} bytes, header says {nbytes}")
            self._write(data)
        self.tensors[name] = TensorMeta(name, header["encoding"], tuple(header["shape"]), start,
                                        self.size - start, header)

    def _write(self, data) -> None:
        self.f.write(data)
        self.sha.update(data)
        for tap in self.taps:
            tap.update(data)
        self.size += len(data)

    def finish(self) -> dict:
        self._pad_to(max(align_up(self.size), ALIGN))  # whole blocks: O_DIRECT reads them
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return {"size": self.size, "sha256": self.sha.hexdigest(),
                "tensors": {n: t.to_json() for n, t in self.tensors.items()}}

    def abort(self) -> None:
        self.f.close()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def _convert(t: torch.Tensor, dtype: str) -> torch.Tensor:
    if not t.is_floating_point():
        return t
    return t.to(getattr(torch, dtype))


def _write_contents(config, generation_config, tensors, tmp: Path, dtype: str, estimate,
                    progress: bool, tokenizer, borrows_embeddings: bool = False) -> dict:
    from tqdm import tqdm

    tied = bool(config.get("tie_word_embeddings", False))
    layout = None  # the int4 layout, once an encoded weight is written
    writers: dict[int | None, _FileWriter] = {}  # None = the resident file
    experts: dict[int, ExpertWriter] = {}  # a mixture-of-experts layer's routed experts
    bar = tqdm(total=estimate, unit="B", unit_scale=True, desc="pack", disable=not progress)
    try:
        for name, tensor in tensors:
            if name == "lm_head.weight" and tied:
                continue  # tied: the model reuses embed_tokens; storing it would waste RAM
            key, rel = split_layer_name(name) or (None, name)
            if isinstance(tensor, torch.Tensor):
                t = _convert(tensor, dtype)
            else:
                t, layout = tensor, tensor.header()["layout"]
            expert = split_expert_name(rel) if key is not None else None
            if expert is not None:
                if key not in experts:
                    experts[key] = ExpertWriter(_FileWriter(tmp / expert_file_name(key)))
                experts[key].add(*expert, t)
            else:
                if key not in writers:
                    fname = RESIDENT_FILE if key is None else layer_file_name(key)
                    writers[key] = _FileWriter(tmp / fname)
                writers[key].add(rel, t)
            bar.update(t.nbytes)
            del tensor, t
        layer_ids = _check_layers(config, writers, borrows_embeddings, experts)
        files = {w.path.name: w.finish() for w in [*writers.values(), *experts.values()]}
    except BaseException as e:
        for w in [*writers.values(), *experts.values()]:
            w.abort()
        if isinstance(e, IncompleteExperts):
            raise PackError(f"{e} The checkpoint is incomplete or corrupt; download it again.") from e
        raise
    finally:
        bar.close()
    tok_dir = _save_tokenizer(tokenizer, tmp)
    if tok_dir:
        for file in sorted((tmp / tok_dir).rglob("*")):
            if file.is_file():
                fsync_path(file)
                files[str(file.relative_to(tmp))] = {"size": file.stat().st_size, "sha256": file_sha256(file)}
    manifest = {"format": FORMAT_NAME, "version": EXPERT_STORE_VERSION if experts else FORMAT_VERSION,
                "dtype": dtype, "config": config,
                "generation_config": generation_config or {}, "tokenizer_dir": tok_dir,
                "layers": [layer_file_name(i) for i in layer_ids], "files": files}
    if experts:
        manifest["expert_files"] = [expert_file_name(i) for i in layer_ids]
    if layout is not None:
        manifest["int4_layout"] = layout
    return manifest


def _check_layers(config: dict, writers: dict, borrows_embeddings: bool = False,
                  experts: dict | None = None) -> list[int]:
    expected = config.get("num_hidden_layers")
    ids = sorted(k for k in writers if k is not None)
    if expected is not None and ids != list(range(int(expected))):
        missing = sorted(set(range(int(expected))) - set(ids))
        raise PackError(f"checkpoint has decoder layers {_ranges(ids)} but config.json says "
                        f"num_hidden_layers={expected}" + (f" (missing {_ranges(missing)})" if missing else "")
                        + ". The checkpoint is incomplete or does not match its config; download it again.")
    if None not in writers and borrows_embeddings:  # a draft without resident tensors
        writers[None] = _FileWriter(writers[ids[0]].path.parent / RESIDENT_FILE)
    if not borrows_embeddings and (None not in writers
                                   or "model.embed_tokens.weight" not in writers[None].tensors):
        raise PackError("checkpoint has no model.embed_tokens.weight; it is not a Llama-family "
                        "causal LM checkpoint, or it is incomplete. Download it again.")
    names = set(writers[ids[0]].tensors) if ids else set()
    for i in ids:
        if set(writers[i].tensors) != names:
            diff = sorted(set(writers[i].tensors) ^ names)
            raise PackError(f"decoder layer {i} has different tensors from layer {ids[0]} "
                            f"({', '.join(diff[:3])}); the checkpoint is incomplete. Download it again.")
    _check_expert_layers(ids, experts or {})
    return ids


def _check_expert_layers(ids: list[int], experts: dict) -> None:
    """Every layer of a mixture-of-experts model has the same number of experts (or none has)."""
    if not experts:
        return
    counts = {i: len(experts[i].extents) + len(experts[i].pending) if i in experts else 0 for i in ids}
    if len(set(counts.values())) > 1:
        raise PackError(f"decoder layers have different numbers of experts ({counts}); the "
                        "checkpoint is incomplete. Download it again.")


def _ranges(ids: list[int]) -> str:
    return f"{ids[0]}..{ids[-1]}" if len(ids) > 3 and ids == list(range(ids[0], ids[-1] + 1)) else str(ids)


def _save_tokenizer(tokenizer, tmp: Path) -> str | None:
    if tokenizer is None:
        return None
    target = tmp / TOKENIZER_DIR
    target.mkdir()
    if tokenizer(target):
        return TOKENIZER_DIR
    shutil.rmtree(target)
    return None


def copy_tokenizer(ckpt: Checkpoint, target: Path) -> bool:
    """Copy (safetensors dir) or export (GGUF) the checkpoint's tokenizer into `target`."""
    if ckpt.kind == "gguf":
        return _export_gguf_tokenizer(ckpt, target)
    copied = False
    for name in TOKENIZER_FILES:
        file = ckpt.path / name
        if file.is_file():
            shutil.copy2(file, target / name)
            copied = copied or name != "generation_config.json"
    for file in ckpt.path.glob("*.jinja"):
        shutil.copy2(file, target / file.name)
    return copied


def _export_gguf_tokenizer(ckpt: Checkpoint, target: Path) -> bool:
    from .gguf_hf_config import gguf_tokenizer

    directory, name = ckpt.tokenizer_source
    try:
        tok = gguf_tokenizer(directory, name, ckpt.config)  # the file is not parsed again
    except (ValueError, OSError, KeyError, ImportError) as e:
        # Not fatal: a store without a tokenizer still runs token-id prompts. Say so loudly.
        warnings.warn(f"{ckpt.path}: could not read its tokenizer ({e}); the store will have no "
                      "tokenizer and accepts only token-id prompts.", stacklevel=2)
        return False
    tok.save_pretrained(str(target))
    return True


def estimate_store_bytes(ckpt: Checkpoint, dtype: str, quant: str | None = None) -> int:
    """Bytes the store's weight files will take (for the disk-space check and progress)."""
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    if ckpt.kind == "gguf" and quant is None:
        # Kept types take about the file's bytes (q8 planes: 10 bits for Q8_0's 8.5).
        return int(ckpt.path.stat().st_size * 1.25) + DISK_MARGIN
    if ckpt.kind == "safetensors":
        try:
            total = _safetensors_numel(ckpt) * itemsize
        except (OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path}: cannot read safetensors headers ({e}); "
                                  "download the checkpoint again.") from e
        if quant not in QUANT_BITS:
            return total
    try:
        shape = ModelShape.from_config(ckpt.config)
        return shape.stored_bytes(QUANT_BITS.get(quant or "", itemsize * 8), itemsize)
    except (KeyError, TypeError):  # an odd config: the checks after packing will say what
        return total if ckpt.kind == "safetensors" else ckpt.path.stat().st_size * 4


def _safetensors_numel(ckpt: Checkpoint) -> int:
    from safetensors import safe_open

    total = 0
    for file in ckpt.weight_files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                total += math.prod(f.get_slice(name).get_shape()) + ALIGN  # + alignment padding
    return total


# -- durability ------------------------------------------------------------------------------
def _write_json_durable(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out (allowed by overwrite) is moved aside first and
    removed only after the new store is in place."""
    old = None
    if out.exists():
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
    os.rename(tmp, out)
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
