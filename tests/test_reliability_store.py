"""Reliability (issue 8), store and packing, through the public API: damaged stores are
clear errors naming the file and the fix (never a crash deep inside or a wrong answer);
a pack killed with SIGKILL leaves nothing that looks like a store and re-running completes;
disk full cleans up. Complements tests/test_offload_store.py (format-level checks)."""
from __future__ import annotations

import copy
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import specdec
from helpers.models import make_tiny_model
from offload import format as fmt
from offload.checkpoint import CheckpointError
from offload.format import StoreError, is_store, open_store, verify
from offload.pack import PackError, pack
from specdec.config import ConfigError

REPACK = "specdec pack SRC OUT"
PROMPT = [5, 17, 3, 42, 8]


@pytest.fixture(autouse=True)
def _fresh_checksums():
    fmt.forget_verified()
    yield
    fmt.forget_verified()


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path = tmp_path_factory.mktemp("rel_store") / "llama"
    make_tiny_model(path, "llama")
    return path


@pytest.fixture
def store(src, tmp_path):
    return pack(src, tmp_path / "store", dtype="float32", progress=False)


def _flip(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x10
    file.write_bytes(bytes(data))


def _damage(store: Path, how: str) -> Path:
    """Damage the store; return the file the error must name."""
    s = open_store(store)
    layer = s.layer_file(1)
    if how == "missing layer":
        layer.unlink()
        return layer
    if how == "truncated layer":
        os.truncate(layer, s.layer_nbytes(1) // 2)
        return layer
    if how == "flipped byte in a layer":
        _flip(layer, s.layer_tensors(1)["self_attn.v_proj.weight"].offset + 7)
        return layer
    if how == "flipped byte in resident.bin":
        _flip(s.resident_file, s.resident_meta.tensors["model.norm.weight"].offset + 2)
        return s.resident_file
    manifest = store / "manifest.json"
    if how == "unknown format version":
        data = json.loads(manifest.read_text())
        data["version"] = max(fmt.READABLE_VERSIONS) + 1  # a future version
        manifest.write_text(json.dumps(data))
    elif how == "random-bytes manifest":
        manifest.write_bytes(os.urandom(2000))
    elif how == "truncated manifest":
        manifest.write_bytes(manifest.read_bytes()[:200])
    elif how == "empty manifest":
        manifest.write_bytes(b"")
    return manifest


@pytest.mark.parametrize("how", ["missing layer", "truncated layer", "flipped byte in a layer",
                                 "flipped byte in resident.bin", "unknown format version",
                                 "random-bytes manifest", "truncated manifest", "empty manifest"])
@pytest.mark.parametrize("ram", [None, "10GB"])  # streamed default budget / everything pinned
def test_damaged_store_is_a_clear_error_through_the_api(store, how, ram):
    expected = specdec.load(store, dtype="float32", ram=ram).generate(PROMPT, max_new_tokens=6)
    fmt.forget_verified()
    file = _damage(store, how)
    with pytest.raises(StoreError) as e:
        # a flipped byte passes the cheap open (sizes intact): the first read must catch it
        lm = specdec.load(store, dtype="float32", ram=ram)
        out = lm.generate(PROMPT, max_new_tokens=6)
        assert out.token_ids != expected.token_ids, "a damaged store gave an answer"
    assert str(file) in str(e.value) and REPACK in str(e.value)
    assert not is_store(store) or verify(store)  # verify agrees the store is bad


def test_flipped_byte_is_caught_even_when_verified_before_in_this_process(store):
    """The first-read checksum cache is keyed by file identity: damage after a good read
    changes the mtime, so the next process-level read is checked again."""
    lm = specdec.load(store, dtype="float32")
    lm.generate(PROMPT, max_new_tokens=3)
    lm.close()
    time.sleep(0.01)
    _flip(open_store(store).layer_file(2), 4096 + 3)
    with pytest.raises(StoreError, match=f"layer_00002.bin: sha256 mismatch.*{REPACK}"):
        specdec.load(store, dtype="float32").generate(PROMPT, max_new_tokens=3)


def test_random_bytes_config_is_refused_by_pack_and_load(src, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    (bad / "config.json").write_bytes(os.urandom(500))
    for attempt in (lambda: pack(bad, tmp_path / "s", progress=False),
                    lambda: specdec.load(bad, ram="1GB", cache_dir=tmp_path / "c")):
        with pytest.raises(CheckpointError, match=r"config.json: not valid JSON.*Restore the file"):
            attempt()
    assert not (tmp_path / "s").exists()


_VALUES = [None, [], {}, "x", -1, 10**30]
_PATHS = [("config",), ("generation_config",), ("files",), ("layers",), ("dtype",),
          ("tokenizer_dir",), ("layers", 0), ("files", "layer_00000.bin"),
          ("files", "layer_00000.bin", "size"), ("files", "layer_00000.bin", "sha256"),
          ("files", "layer_00000.bin", "tensors"), ("files", "resident.bin", "tensors"),
          ("files", "layer_00001.bin", "tensors", "mlp.up_proj.weight"),
          ("files", "layer_00001.bin", "tensors", "mlp.up_proj.weight", "shape"),
          ("files", "layer_00001.bin", "tensors", "mlp.up_proj.weight", "offset"),
          ("files", "layer_00001.bin", "tensors", "mlp.up_proj.weight", "dtype"),
          ("config", "hidden_size"), ("config", "num_hidden_layers"), ("config", "rms_norm_eps"),
          ("config", "rope_parameters"), ("config", "head_dim")]


def test_manifest_with_wrong_json_types_is_a_clear_error(store):
    """Valid JSON, wrong shape: every mutation either still works or is a StoreError /
    ConfigError naming the file (manifest.json or what it points to) and the fix; never AttributeError, KeyError, TypeError."""
    manifest = store / "manifest.json"
    original = json.loads(manifest.read_text())
    refused = 0
    for path in _PATHS:
        for value in _VALUES:
            data = copy.deepcopy(original)
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            manifest.write_text(json.dumps(data))
            try:
                specdec.load(store, dtype="float32", ram="10GB").generate(PROMPT, max_new_tokens=2)
            except (StoreError, ConfigError) as e:
                refused += 1
                assert str(store) in str(e), (path, value, e)  # names the file
                assert REPACK in str(e) or "restore" in str(e), (path, value, e)
    assert refused >= len(_PATHS) * len(_VALUES) - 10  # nearly every mutation is refused
    manifest.write_text(json.dumps(original))
    assert verify(store) == []


# -- a pack killed with SIGKILL ------------------------------------------------------------------
_SLOW_PACK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import offload.pack as P
    src, out, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    real_add, n = P._FileWriter.add, [0]
    def slow_add(self, name, tensor):
        real_add(self, name, tensor)
        n[0] += 1
        if n[0] == 12:  # some layer files written, no manifest yet: signal and stall
            ready.write_text("ready")
            time.sleep(120)
    P._FileWriter.add = slow_add
    P.pack(src, out, dtype="float32", progress=False, overwrite=True)
""")


def _pack_and_kill(src: Path, out: Path, tmp_path: Path) -> None:
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PACK, str(src), str(out), str(ready)],
                            env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the pack never got going"
            time.sleep(0.05)
        partials = list(out.parent.glob(f"{out.name}.partial-{proc.pid}"))
        assert partials and any(partials[0].glob("layer_*.bin"))  # really mid-pack
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.slow
def test_pack_killed_midway_leaves_no_store_and_rerun_completes(src, tmp_path):
    out = tmp_path / "out"
    expected = specdec.load(src, dtype="float32").generate(PROMPT, max_new_tokens=8).token_ids

    _pack_and_kill(src, out, tmp_path)
    assert not is_store(out)
    with pytest.raises(StoreError, match=REPACK):
        open_store(out)
    partial = next(tmp_path.glob("out.partial-*"))
    assert not is_store(partial)  # the debris does not look like a store either
    with pytest.raises(StoreError, match="manifest.json: missing"):
        open_store(partial)
    # load() with a RAM budget packs into its cache the same way: it must not take the
    # debris for a store either (nothing named like the cache entry exists yet)

    pack(src, out, dtype="float32", progress=False)  # running it again completes
    assert verify(out) == []
    assert not list(tmp_path.glob("out.partial-*"))  # the killed pack's debris is gone
    assert specdec.load(out, dtype="float32").generate(PROMPT, max_new_tokens=8).token_ids == expected

    # A re-pack over the good store, killed midway, loses nothing: the old store stays whole.
    _pack_and_kill(src, out, tmp_path)
    assert is_store(out) and verify(out) == []
    assert specdec.load(out, dtype="float32").generate(PROMPT, max_new_tokens=8).token_ids == expected
    pack(src, out, dtype="float32", progress=False, overwrite=True)
    assert verify(out) == [] and not list(tmp_path.glob("out.partial-*"))


def test_stale_partial_of_a_live_process_is_left_alone(src, tmp_path):
    from offload.pack import remove_stale_partials

    live = tmp_path / f"out.partial-{os.getppid()}"  # the parent process is alive
    dead = tmp_path / "out.partial-999999999"  # beyond pid_max: no such process
    live.mkdir()
    dead.mkdir()
    assert remove_stale_partials(tmp_path / "out") == [dead]
    assert live.is_dir() and not dead.exists()


# -- disk full -----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["layer write", "fsync", "manifest write"])
def test_disk_full_during_pack_is_clear_and_loses_nothing(src, store, tmp_path, monkeypatch, where):
    from offload import pack as pack_mod

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "layer write":
        monkeypatch.setattr(pack_mod._FileWriter, "add", full)
    elif where == "fsync":
        monkeypatch.setattr(pack_mod._FileWriter, "finish", full)
    else:
        monkeypatch.setattr(pack_mod, "_write_json_durable", full)
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}
    for out, overwrite in ((tmp_path / "new", False), (store, True)):
        with pytest.raises(PackError, match="no space left on device.*Free disk space"):
            pack(src, out, dtype="float32", progress=False, overwrite=overwrite)
        assert not list(tmp_path.glob("*.partial-*")) and not list(tmp_path.glob("*.old-*"))
    assert not (tmp_path / "new").exists()
    # the existing store, which the failed overwrite targeted, is untouched
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()} == before
    assert verify(store) == []
