"""The layer store: a packed model laid out for streaming from disk.

A store is a directory:

    manifest.json        format version, HF config, generation config, every file's size and
                         sha256, every tensor's dtype/shape/offset/nbytes. Written last by pack.
    resident.bin         embeddings, final norm, lm_head (absent when tied): kept in RAM
    layer_00000.bin ...  one file per decoder layer, all its tensors back to back
    tokenizer/           tokenizer files, when the source had them

Version 2 adds per-tensor encodings: a tensor's manifest entry may carry `encoding`, the
weight's `header()` (offload/encodings: q4 / q8), whose parts lie back to back from the
tensor's offset at `encodings.part_offsets`; the tensor's `dtype` is then the encoding's name
and `nbytes` the parts' extent. The manifest's `int4_layout` records the CPU layout the int4
bytes were packed for; a store packed for another layout is refused by `check_layout` (the
error says to run `specdec repack STORE`, offload/repack.py). Version 1 stores (plain tensors
only) are read as before.

Version 3 (written only for mixture-of-experts models; dense stores stay version 2) adds one
`experts_00000.bin` per layer beside its layer file: the layer file keeps the dense part
(attention, norms, router, shared expert) and streams as before; the experts file holds every
routed expert's tensors, each expert ONE contiguous 4096-aligned extent (its tensors back to
back, each aligned), so a pass reads exactly the experts it routes to, one read each. The
manifest lists these files under `expert_files` (one per layer), and each file's entry carries
`extents`: [offset, nbytes, sha256] per expert, so an expert is checksummed on its own first
read (offload/expert_stream.py).

Every tensor starts at a 4096-aligned offset and every file is padded to a multiple of
4096, so one layer is ONE sequential O_DIRECT read into a page-aligned buffer and each
tensor is a zero-copy view of that buffer. Opening a store checks the manifest and the
file sizes (cheap); `verify` checks every sha256 (slow, reads everything); a layer's
checksum is also checked the first time a process reads it (`check_first_read`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from . import encodings

FORMAT_NAME = "specdec-layer-store"
FORMAT_VERSION = 2  # what a dense model's store is written as
EXPERT_STORE_VERSION = 3  # a mixture-of-experts model's store (expert files)
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
RESIDENT_FILE = "resident.bin"
TOKENIZER_DIR = "tokenizer"
ALIGN = 4096
REPACK = "Re-pack it with `specdec pack SRC OUT`."

# Only plain numeric dtypes may appear in a manifest; names are torch's.
DTYPES = {name: getattr(torch, name) for name in
          ("float32", "bfloat16", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}


class StoreError(ValueError):
    """A store that cannot be used; the message names the file and the fix."""


def layer_file_name(i: int) -> str:
    return f"layer_{i:05d}.bin"


def expert_file_name(i: int) -> str:
    return f"experts_{i:05d}.bin"


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str  # torch dtype name, a key of DTYPES; or the encoding's name ("q4", "q8")
    shape: tuple[int, ...]
    offset: int  # bytes from the start of the file, a multiple of ALIGN
    nbytes: int
    encoding: dict | None = None  # an encoded weight's header (offload/encodings), else None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_json(self) -> dict:
        out = {"dtype": self.dtype, "shape": list(self.shape), "offset": self.offset, "nbytes": self.nbytes}
        if self.encoding is not None:
            out["encoding"] = self.encoding
        return out


@dataclass(frozen=True)
class ExpertExtent:
    """One expert of one layer: where its bytes lie in the layer's experts file, their checksum,
    and its tensors by part ("up_proj.weight"), offsets relative to the extent's start."""
    offset: int
    nbytes: int
    sha256: str
    tensors: dict[str, TensorMeta]


@dataclass(frozen=True)
class FileMeta:
    name: str  # relative to the store directory
    size: int
    sha256: str
    tensors: dict[str, TensorMeta]


class Store:
    """An opened, size-checked store. Cheap to create; reads no weights."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.config: dict = manifest["config"]
        self.generation_config: dict = manifest.get("generation_config") or {}
        self.dtype: str = manifest.get("dtype", "")
        self.files: dict[str, FileMeta] = _parse_files(manifest)
        self.num_layers: int = len(manifest["layers"])
        self._layer_names: list[str] = list(manifest["layers"])
        tok = manifest.get("tokenizer_dir")
        self.tokenizer_dir: Path | None = path / tok if tok else None
        self.int4_layout: dict | None = manifest.get("int4_layout")
        self.embeddings_from_target: bool = bool(manifest.get("embeddings_from_target"))
        self._expert_names: list[str] = list(manifest.get("expert_files") or [])
        self._extents = [_parse_extents(manifest["files"][n], self.files[n]) for n in self._expert_names]

    # -- layers ---------------------------------------------------------------------------
    def layer_file(self, i: int) -> Path:
        return self.path / self._layer_names[i]

    def layer_meta(self, i: int) -> FileMeta:
        return self.files[self._layer_names[i]]

    def layer_nbytes(self, i: int) -> int:
        return self.layer_meta(i).size

    def layer_tensors(self, i: int) -> dict[str, TensorMeta]:
        """Layer-relative name ("self_attn.q_proj.weight") -> where it lies in layer_file(i)."""
        return self.layer_meta(i).tensors

    # -- experts (version 3) ----------------------------------------------------------------
    @property
    def has_experts(self) -> bool:
        return bool(self._expert_names)

    def expert_file(self, i: int) -> Path:
        return self.path / self._expert_names[i]

    def expert_meta(self, i: int) -> FileMeta:
        return self.files[self._expert_names[i]]

    def expert_extents(self, i: int) -> list[ExpertExtent]:
        """Layer i's experts, indexed by expert id."""
        return self._extents[i]

    def experts_nbytes(self, i: int) -> int:
        """Bytes of layer i's experts file (0 for a dense store)."""
        return self.expert_meta(i).size if self._expert_names else 0

    @property
    def max_expert_nbytes(self) -> int:
        """The largest single expert's extent (the size of one expert read)."""
        return max((x.nbytes for ext in self._extents for x in ext), default=0)

    def all_layer_tensors(self, i: int) -> dict[str, TensorMeta]:
        """Layer i's tensors, dense and expert, by layer-relative name (for shape checks)."""
        out = dict(self.layer_tensors(i))
        if self._expert_names:
            out.update(self.expert_meta(i).tensors)
        return out

    def weight_files(self) -> list[tuple[int | None, FileMeta]]:
        """(layer index or None for the resident file, file) of every weight file."""
        out = [(None, self.resident_meta)] + [(i, self.layer_meta(i)) for i in range(self.num_layers)]
        return out + [(i, self.expert_meta(i)) for i in range(len(self._expert_names))]

    @property
    def max_layer_nbytes(self) -> int:
        return max((self.layer_nbytes(i) for i in range(self.num_layers)), default=0)

    @property
    def layers_nbytes(self) -> int:
        """Bytes of every layer, dense parts and experts."""
        return sum(self.layer_nbytes(i) + self.experts_nbytes(i) for i in range(self.num_layers))

    # -- resident part ----------------------------------------------------------------------
    @property
    def resident_file(self) -> Path:
        return self.path / RESIDENT_FILE

    @property
    def resident_meta(self) -> FileMeta:
        return self.files[RESIDENT_FILE]

    @property
    def resident_nbytes(self) -> int:
        return self.resident_meta.size

    @property
    def tied(self) -> bool:
        return "lm_head.weight" not in self.resident_meta.tensors

    @property
    def weights_nbytes(self) -> int:
        """Bytes of all weight files (resident + layers): RAM to hold the store fully resident."""
        return self.resident_nbytes + self.layers_nbytes

    def encodings(self) -> dict[str, int]:
        """Encoding (or dtype) -> bytes of the tensors stored in it, over the whole store."""
        out: dict[str, int] = {}
        for _, meta in self.weight_files():
            for t in meta.tensors.values():
                out[t.dtype] = out.get(t.dtype, 0) + t.nbytes
        return out

    def encoding_summary(self) -> str:
        """'q4 66.4 MB, q8 35.4 MB, bfloat16 0.1 MB' (largest first), for info and banners."""
        parts = sorted(self.encodings().items(), key=lambda kv: -kv[1])
        return ", ".join(f"{name} {nbytes / 1e6:.1f} MB" for name, nbytes in parts)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, layers={self.num_layers}, dtype={self.dtype})"


def check_layout(store: Store) -> None:
    """Raise StoreError unless the store's int4 bytes (if any) were packed for this machine's
    CPU layout: read under another layout they would give wrong results, silently."""
    if store.int4_layout is None:
        return
    try:
        encodings.int4_layout.check_layout(store.int4_layout, f"{store.path}")
    except encodings.LayoutMismatchError as e:
        raise StoreError(f"{e} Run `specdec repack {store.path}` once (converts the store in "
                         f"place, atomically), or pack it again from its source file.") from e


def is_store(path: str | Path) -> bool:
    """True for a directory holding a manifest of ours (any version); checks no sizes."""
    manifest = Path(path) / MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def looks_like_store(path: str | Path) -> bool:
    """True for a directory holding store files (a manifest, even a damaged one, or layer
    files) and no config.json: meant as a store, so its errors must be the store's."""
    path = Path(path)
    if not path.is_dir() or (path / "config.json").exists():
        return False
    return any((path / name).exists() for name in (MANIFEST, RESIDENT_FILE, layer_file_name(0)))


def open_store(path: str | Path) -> Store:
    """Open a store, checking the manifest's version and every file's existence and size."""
    path = Path(path).expanduser()
    manifest = _read_manifest(path)
    try:
        _check_manifest_types(manifest)
        store = Store(path, manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, StoreError):  # name the manifest the problem was found in
            raise StoreError(f"{path / MANIFEST}: {e}") from e
        raise StoreError(f"{path / MANIFEST}: malformed manifest ({e!r}). {REPACK}") from e
    _check_sizes(store)
    if store.tokenizer_dir is not None and not store.tokenizer_dir.is_dir():
        raise StoreError(f"{store.tokenizer_dir}: missing from the store (the manifest names it "
                         f"as the tokenizer directory). {REPACK}")
    return store


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    if not path.is_dir():
        raise StoreError(f"{path}: not a directory, so not a packed store. "
                         "Create one with `specdec pack SRC OUT`.")
    if not file.exists():
        raise StoreError(f"{file}: missing, so {path} is not a complete store (an interrupted "
                         f"pack leaves none). {REPACK}")
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{file}: not a specdec store manifest (not JSON: {e}). {REPACK}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise StoreError(f"{file}: not a specdec store manifest (no format={FORMAT_NAME!r}). {REPACK}")
    version = data.get("version")
    if version not in READABLE_VERSIONS:
        raise StoreError(f"{file}: store format version {version!r} is not supported (this "
                         f"specdec reads versions {', '.join(map(str, READABLE_VERSIONS))}). Upgrade specdec, or "
                         f"re-pack with this version: `specdec pack SRC OUT`.")
    return data


def _check_manifest_types(m: dict) -> None:
    """Raise TypeError naming the first entry of the wrong JSON type (a damaged manifest
    that is still valid JSON must not surface later as an AttributeError deep inside)."""
    def need(value, types, where):
        if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
            raise TypeError(f"{where} is {type(value).__name__} {str(value)[:40]!r}")

    need(m.get("config"), dict, "config")
    need(m.get("generation_config"), (dict, type(None)), "generation_config")
    need(m.get("dtype", ""), str, "dtype")
    if m.get("dtype") and m["dtype"] not in DTYPES:
        raise ValueError(f"dtype {m['dtype']!r} is not a known dtype")
    need(m.get("tokenizer_dir"), (str, type(None)), "tokenizer_dir")
    tok = m.get("tokenizer_dir")
    if tok and (os.path.isabs(tok) or ".." in Path(tok).parts):
        raise TypeError(f"tokenizer_dir {tok!r} points outside the store")
    need(m.get("layers"), list, "layers")
    for name in m["layers"]:
        need(name, str, "a layers entry")
    need(m.get("files"), dict, "files")
    for name, f in m["files"].items():
        need(f, dict, f"files[{name!r}]")
        need(f.get("size"), int, f"files[{name!r}].size")
        need(f.get("sha256"), str, f"files[{name!r}].sha256")
        need(f.get("tensors", {}), dict, f"files[{name!r}].tensors")
        for t, meta in f.get("tensors", {}).items():
            where = f"files[{name!r}].tensors[{t!r}]"
            need(meta, dict, where)
            need(meta.get("dtype"), str, f"{where}.dtype")
            need(meta.get("shape"), list, f"{where}.shape")
            for d in meta["shape"]:
                need(d, int, f"{where}.shape")
                if d < 0:
                    raise ValueError(f"{where}.shape has a negative size")
            need(meta.get("offset"), int, f"{where}.offset")
            need(meta.get("nbytes"), int, f"{where}.nbytes")
            need(meta.get("encoding"), (dict, type(None)), f"{where}.encoding")
    need(m.get("int4_layout"), (dict, type(None)), "int4_layout")
    _check_expert_types(m, need)


def _check_expert_types(m: dict, need) -> None:
    experts = m.get("expert_files")
    need(experts, (list, type(None)), "expert_files")
    if experts is None:
        return
    if len(experts) != len(m["layers"]):
        raise ValueError(f"expert_files lists {len(experts)} files for {len(m['layers'])} layers")
    for name in experts:
        need(name, str, "an expert_files entry")
        extents = m["files"].get(name, {}).get("extents")
        need(extents, list, f"files[{name!r}].extents")
        for extent in extents:
            need(extent, list, f"files[{name!r}].extents entry")
            if len(extent) != 3:
                raise ValueError(f"files[{name!r}].extents entry {extent!r} is not [offset, nbytes, sha256]")
            need(extent[0], int, f"files[{name!r}].extents offset")
            need(extent[1], int, f"files[{name!r}].extents nbytes")
            need(extent[2], str, f"files[{name!r}].extents sha256")


def _parse_files(manifest: dict) -> dict[str, FileMeta]:
    files = {}
    for name, f in manifest["files"].items():
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise StoreError(f"manifest names a file outside the store: {name!r}. {REPACK}")
        tensors = {t: TensorMeta(t, m["dtype"], tuple(int(d) for d in m["shape"]), int(m["offset"]),
                                 int(m["nbytes"]), m.get("encoding"))
                   for t, m in f.get("tensors", {}).items()}
        meta = FileMeta(name, int(f["size"]), str(f["sha256"]), tensors)
        _check_tensor_layout(meta)
        files[name] = meta
    for name in [RESIDENT_FILE, *manifest["layers"], *(manifest.get("expert_files") or [])]:
        if name not in files:
            raise StoreError(f"manifest lists no size/checksum for {name}. {REPACK}")
    return files


def _check_tensor_layout(meta: FileMeta) -> None:
    # A manifest that points outside its file would give garbage views or crash; refuse it.
    for t in meta.tensors.values():
        if t.encoding is not None:
            _check_encoded_layout(meta, t)
            continue
        if t.dtype not in DTYPES:
            raise StoreError(f"manifest: {meta.name}:{t.name} has unknown dtype {t.dtype!r}. {REPACK}")
        itemsize = torch.empty((), dtype=DTYPES[t.dtype]).element_size()
        if (t.offset % ALIGN or t.offset < 0 or t.offset + t.nbytes > meta.size
                or math.prod(t.shape) * itemsize != t.nbytes):
            raise StoreError(f"manifest: {meta.name}:{t.name} has an inconsistent layout "
                             f"(offset {t.offset}, {t.nbytes} bytes, shape {t.shape}). {REPACK}")


def _parse_extents(entry: dict, meta: FileMeta) -> list[ExpertExtent]:
    """An experts file's extents, each with its tensors (offsets made relative to the extent);
    every tensor must lie inside its own expert's aligned extent."""
    from .expert_names import split_expert_name

    extents = [(int(o), int(n), str(h)) for o, n, h in entry["extents"]]
    tensors: list[dict[str, TensorMeta]] = [{} for _ in extents]
    for name, t in meta.tensors.items():
        where = split_expert_name(name)
        if where is None or where[0] >= len(extents):
            raise StoreError(f"manifest: {meta.name}:{name} is not an expert of this file's "
                             f"{len(extents)} extents. {REPACK}")
        start, nbytes, _ = extents[where[0]]
        if t.offset < start or t.offset + t.nbytes > start + nbytes:
            raise StoreError(f"manifest: {meta.name}:{name} lies outside its expert's extent. {REPACK}")
        tensors[where[0]][where[1]] = TensorMeta(name, t.dtype, t.shape, t.offset - start, t.nbytes,
                                                 t.encoding)
    out = []
    for (start, nbytes, sha), named in zip(extents, tensors):
        if start % ALIGN or nbytes % ALIGN or start < 0 or start + nbytes > meta.size or not named:
            raise StoreError(f"manifest: {meta.name} has an inconsistent expert extent (offset "
                             f"{start}, {nbytes} bytes). {REPACK}")
        out.append(ExpertExtent(start, nbytes, sha, named))
    return out


def _check_encoded_layout(meta: FileMeta, t: TensorMeta) -> None:
    where = f"{meta.name}:{t.name}"
    try:
        encodings.encoding_class(t.encoding)
        size = encodings.packed_size(t.encoding)
        consistent = (t.dtype == t.encoding["encoding"]
                      and list(t.shape) == [int(d) for d in t.encoding["shape"]])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StoreError(f"manifest: {where} has an unreadable encoding header ({e}). {REPACK}") from e
    if (not consistent or t.offset % ALIGN or t.offset < 0 or t.nbytes != size
            or t.offset + t.nbytes > meta.size):
        raise StoreError(f"manifest: {where} has an inconsistent {t.dtype} layout (offset "
                         f"{t.offset}, {t.nbytes} bytes, shape {t.shape}). {REPACK}")


def _check_sizes(store: Store) -> None:
    for name, meta in store.files.items():
        file = store.path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{file}: missing from the store. {REPACK}") from None
        if size != meta.size:
            what = "truncated" if size < meta.size else "larger than recorded"
            raise StoreError(f"{file}: {what} ({size} bytes, manifest says {meta.size}). "
                             f"The store is damaged. {REPACK}")


# -- checksums --------------------------------------------------------------------------------
def file_sha256(path: Path, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(store: Store | str | Path) -> list[str]:
    """Check every file's size and sha256 against the manifest; return the problems found
    (empty list = the store is intact). Reads the whole store."""
    if not isinstance(store, Store):
        try:
            store = open_store(store)
        except StoreError as e:
            return [str(e)]
    problems = []
    for name, meta in store.files.items():
        file = store.path / name
        try:
            digest = file_sha256(file)
        except OSError as e:
            problems.append(f"{file}: cannot read ({e}). {REPACK}")
            continue
        if digest != meta.sha256:
            problems.append(f"{file}: sha256 mismatch (the file is corrupt). {REPACK}")
    return problems


# Files whose checksum this process has already checked: (path, size, mtime_ns, inode).
# A re-packed store has new inodes, so it is checked again.
_verified: set[tuple] = set()
_verified_lock = threading.Lock()


def _file_key(file: Path) -> tuple:
    st = file.stat()
    return (str(file.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def check_first_read(store: Store, name: str, data) -> None:
    """Check `data` (the bytes just read of store file `name`) against its sha256, the first
    time this process reads that file; later reads are trusted (hashing every pass would
    cost as much as the read). Raises StoreError naming the file and the fix."""
    file = store.path / name
    key = _file_key(file)
    with _verified_lock:
        if key in _verified:
            return
    meta = store.files[name]
    digest = hashlib.sha256(memoryview(data)[:meta.size]).hexdigest()
    if digest != meta.sha256:
        raise StoreError(f"{file}: sha256 mismatch on first read (the file is corrupt). {REPACK}")
    with _verified_lock:
        _verified.add(key)


def check_expert_first_read(store: Store, layer: int, expert: int, data) -> None:
    """As check_first_read, for one expert's extent (an experts file is never read whole
    while streaming: each expert carries its own sha256 in the manifest)."""
    file = store.expert_file(layer)
    key = (*_file_key(file), expert)
    with _verified_lock:
        if key in _verified:
            return
    extent = store.expert_extents(layer)[expert]
    if hashlib.sha256(memoryview(data)[:extent.nbytes]).hexdigest() != extent.sha256:
        raise StoreError(f"{file}: sha256 mismatch in expert {expert} on first read (the file is "
                         f"corrupt). {REPACK}")
    with _verified_lock:
        _verified.add(key)


def forget_verified() -> None:
    """Make the next read of every file check its checksum again (tests)."""
    with _verified_lock:
        _verified.clear()
