"""The layer store: pack round trip, damage detection, atomic pack, tmpfs fallback."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers.models import make_tiny_model
from offload import format as fmt
from offload.checkpoint import open_checkpoint
from offload.format import StoreError, is_store, open_store, verify
from offload.pack import PackError, pack, write_store
from offload.reader import DirectReader, aligned_buffer, read_tensors


@pytest.fixture(autouse=True)
def _fresh_checksums():
    fmt.forget_verified()  # every test sees first-read checks again
    yield
    fmt.forget_verified()


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "qwen2"
    make_tiny_model(path, "qwen2")  # has qkv biases: more tensor kinds
    (path / "tokenizer.json").write_text("{}")  # a stand-in: copied, not parsed
    return path


@pytest.fixture
def store32(model_dir, tmp_path):
    return open_store(pack(model_dir, tmp_path / "store", dtype="float32", progress=False))


def _store_state(store) -> dict[str, torch.Tensor]:
    meta = store.resident_meta
    out = dict(read_tensors(store.resident_file, meta.tensors, meta.size,
                            check=lambda buf: fmt.check_first_read(store, fmt.RESIDENT_FILE, buf)))
    for i in range(store.num_layers):
        layer = read_tensors(store.layer_file(i), store.layer_tensors(i), store.layer_nbytes(i))
        out.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    return out


def test_pack_round_trip_exact(model_dir, store32):
    expected = open_checkpoint(model_dir).state_dict()
    got = _store_state(store32)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == torch.float32 and torch.equal(got[name], tensor), name
    assert store32.num_layers == 3 and store32.config["model_type"] == "qwen2"
    assert "self_attn.q_proj.bias" in store32.layer_tensors(0)
    assert (store32.tokenizer_dir / "tokenizer.json").read_text() == "{}"
    assert verify(store32) == []


def test_layout_is_page_aligned(store32):
    for i in range(store32.num_layers):
        assert store32.layer_nbytes(i) % 4096 == 0
        assert all(t.offset % 4096 == 0 for t in store32.layer_tensors(i).values())
    assert store32.resident_nbytes % 4096 == 0


def test_pack_bf16_converts_and_tied_drops_lm_head(tmp_path):
    make_tiny_model(tmp_path / "m", "qwen3", tie_word_embeddings=True)
    store = open_store(pack(tmp_path / "m", tmp_path / "s", progress=False))
    state = _store_state(store)
    assert store.tied and "lm_head.weight" not in state
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    expected = open_checkpoint(tmp_path / "m").state_dict()
    assert torch.equal(state["model.layers.1.self_attn.q_norm.weight"],
                       expected["model.layers.1.self_attn.q_norm.weight"].to(torch.bfloat16))


def test_truncated_layer_file_caught_on_open(store32):
    file = store32.layer_file(1)
    os.truncate(file, store32.layer_nbytes(1) - 4096)
    with pytest.raises(StoreError) as e:
        open_store(store32.path)
    assert str(file) in str(e.value) and "truncated" in str(e.value)
    assert "specdec pack SRC OUT" in str(e.value)


def test_missing_file_caught_on_open(store32):
    store32.layer_file(2).unlink()
    with pytest.raises(StoreError, match="layer_00002.bin: missing"):
        open_store(store32.path)


def _flip_byte(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x40
    file.write_bytes(bytes(data))


def test_flipped_byte_caught_by_verify_and_first_read(store32):
    file = store32.layer_file(1)
    _flip_byte(file, store32.layer_tensors(1)["mlp.up_proj.weight"].offset + 5)
    store = open_store(store32.path)  # sizes are intact: opening is cheap and succeeds
    problems = verify(store)
    assert len(problems) == 1 and str(file) in problems[0] and "specdec pack SRC OUT" in problems[0]
    buf = aligned_buffer(store.layer_nbytes(1))
    DirectReader().read_file(file, buf)
    with pytest.raises(StoreError) as e:
        fmt.check_first_read(store, file.name, buf)
    assert str(file) in str(e.value) and "specdec pack SRC OUT" in str(e.value)
    # an intact layer passes, and is then trusted on later reads
    buf0 = aligned_buffer(store.layer_nbytes(0))
    DirectReader().read_file(store.layer_file(0), buf0)
    fmt.check_first_read(store, store.layer_file(0).name, buf0)


@pytest.mark.parametrize("content, match", [
    (os.urandom(300), "not a specdec store manifest"),
    (b'{"format": "specdec-layer-store", "version": 99}', "version 99 is not supported"),
    (b'{"format": "specdec-layer-store", "version": 1, "config": {}}', "malformed manifest"),
])
def test_bad_manifest_is_a_clear_error(store32, content, match):
    (store32.path / "manifest.json").write_bytes(content)
    with pytest.raises(StoreError, match=match) as e:
        open_store(store32.path)
    assert "manifest.json" in str(e.value)


def test_manifest_pointing_outside_the_file_is_refused(store32):
    manifest = json.loads((store32.path / "manifest.json").read_text())
    entry = manifest["files"]["layer_00000.bin"]["tensors"]["mlp.up_proj.weight"]
    entry["offset"] = manifest["files"]["layer_00000.bin"]["size"]
    (store32.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="inconsistent layout"):
        open_store(store32.path)


def test_interrupted_pack_leaves_no_store(model_dir, tmp_path):
    ckpt = open_checkpoint(model_dir)

    def dying_tensors():
        for n, (name, t) in enumerate(ckpt.tensors()):
            if n == 5:
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-pack
            yield name, t

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_store(ckpt.config, {}, dying_tensors(), out, "float32", progress=False)
    assert not out.exists() and not is_store(out)
    assert not list(tmp_path.glob("out.partial-*"))  # cleaned up
    # A partial dir left by a killed pack (no manifest) is refused with the fix.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "layer_00000.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(StoreError, match="manifest.json: missing.*specdec pack SRC OUT"):
        open_store(killed)


def test_pack_refuses_to_overwrite(model_dir, store32):
    with pytest.raises(PackError, match="not empty.*--overwrite"):
        pack(model_dir, store32.path, progress=False)
    pack(model_dir, store32.path, dtype="float32", progress=False, overwrite=True)
    assert verify(open_store(store32.path)) == []


def test_pack_checks_disk_space(model_dir, tmp_path, monkeypatch):
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 1000))
    with pytest.raises(PackError, match="not enough free disk space"):
        pack(model_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_pack_enospc_is_clear_and_cleans_up(model_dir, tmp_path, monkeypatch):
    import errno
    from offload import pack as pack_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pack_mod._FileWriter, "add", full)
    with pytest.raises(PackError, match="no space left"):
        pack(model_dir, tmp_path / "out", progress=False)
    assert not list(tmp_path.glob("out*"))


def test_pack_rejects_fp16_store_dtype(model_dir, tmp_path):
    with pytest.raises(PackError, match="float16 is refused"):
        pack(model_dir, tmp_path / "out", dtype="float16", progress=False)


def _refuse_o_direct(monkeypatch):
    """Make O_DIRECT opens fail with EINVAL, as on tmpfs before Linux 6.6 (this kernel's
    tmpfs accepts O_DIRECT, so the refusal is simulated)."""
    import errno
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", fake_open)


def test_tmpfs_store_works_with_fallback_reads(model_dir, monkeypatch):
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    out = shm / f"specdec-test-{os.getpid()}"
    try:
        store = open_store(pack(model_dir, out, dtype="float32", progress=False))
        _refuse_o_direct(monkeypatch)
        reader = DirectReader(chunk_bytes=4096, threads=2)
        buf = aligned_buffer(store.layer_nbytes(0))
        reader.read_file(store.layer_file(0), buf)
        reader.close()
        assert reader.fallback_files == 1 and reader.direct_files == 0
        expected = open_checkpoint(model_dir).state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in _store_state(store).items())
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_real_disk_uses_o_direct(store32):
    reader = DirectReader(chunk_bytes=4096, threads=3)  # many chunks, several in flight
    buf = aligned_buffer(store32.layer_nbytes(0))
    assert reader.read_file(store32.layer_file(0), buf) == store32.layer_nbytes(0)
    reader.close()
    if reader.direct_files != 1:
        pytest.skip("this filesystem has no O_DIRECT")
    assert bytes(buf[:store32.layer_nbytes(0)]) == store32.layer_file(0).read_bytes()


def test_read_errors_name_the_file(store32, monkeypatch):
    import errno

    def broken(fd, buffers, offset):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "preadv", broken)
    buf = aligned_buffer(store32.layer_nbytes(0))
    with pytest.raises(OSError) as e:
        DirectReader().read_file(store32.layer_file(0), buf)
    assert e.value.errno == errno.EIO and str(store32.layer_file(0)) in str(e.value)


def test_einval_on_direct_read_falls_back(store32, monkeypatch):
    import errno
    real = os.preadv
    calls = {"n": 0}

    def einval_first(fd, buffers, offset):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)
    monkeypatch.setattr(os, "preadv", einval_first)
    reader = DirectReader(threads=1)
    buf = aligned_buffer(store32.layer_nbytes(0))
    reader.read_file(store32.layer_file(0), buf)
    assert reader.fallback_files == 1
    assert bytes(buf[:store32.layer_nbytes(0)]) == store32.layer_file(0).read_bytes()
