"""pack / verify / bench io commands and the synthetic checkpoint maker."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from helpers.models import make_tiny_model
from offload import format as fmt
from offload.checkpoint import open_checkpoint
from offload.format import open_store
from specdec.cli.offload_commands import add_offload_commands

ROOT = Path(__file__).resolve().parent.parent


def run(argv) -> int:
    parser = argparse.ArgumentParser(prog="specdec")
    add_offload_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(autouse=True)
def _fresh_checksums():
    fmt.forget_verified()
    yield
    fmt.forget_verified()


def test_pack_verify_bench(tmp_path, capsys):
    make_tiny_model(tmp_path / "m", "llama")
    store = tmp_path / "store"
    assert run(["pack", tmp_path / "m", store, "--dtype", "float32", "--quiet"]) == 0
    assert run(["pack", tmp_path / "m", store, "--quiet"]) == 1  # exists: one-line error
    assert "--overwrite" in capsys.readouterr().err
    assert run(["verify", store]) == 0
    assert "OK" in capsys.readouterr().out
    from specdec.cli import main  # the real entry point dispatches to these handlers
    assert main(["verify", str(store)]) == 0
    assert "OK" in capsys.readouterr().out

    assert run(["bench", "io", store, "--tokens", "1,4", "--repeat", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["streamed_bytes"] == open_store(store).layers_nbytes
    assert result["raw_seconds"] > 0 and result["stream_only_seconds"] > 0 and [p["tokens"] for p in result["passes"]] == [1, 4]
    for p in result["passes"]:
        assert {"seconds", "ratio_to_raw", "compute_wait_seconds"} <= set(p)
    assert result["peak_rss_bytes"] > 0 and "bytes_read" in result

    assert run(["bench", "io", store, "--tokens", "1", "--repeat", "1", "--ram", "1KB"]) == 1
    assert "too small: at least" in capsys.readouterr().err

    layer = store / "layer_00001.bin"
    data = bytearray(layer.read_bytes())
    data[7] ^= 1
    layer.write_bytes(bytes(data))
    assert run(["verify", store]) == 1
    out = capsys.readouterr().out
    assert str(layer) in out and "specdec pack SRC OUT" in out


def test_verify_of_a_non_store_is_one_line(tmp_path, capsys):
    assert run(["verify", tmp_path]) == 1
    err = capsys.readouterr().err
    assert "manifest.json: missing" in err and "Traceback" not in err


def test_make_synthetic_dir_and_store(tmp_path):
    from transformers import AutoModelForCausalLM

    from specdec.bench import synthetic as mod

    assert mod.main(["tiny", str(tmp_path / "hf"), "--shard-size", "0.0001"]) == 0
    shards = sorted((tmp_path / "hf").glob("*.safetensors"))
    assert len(shards) > 1  # really sharded
    state = open_checkpoint(tmp_path / "hf").state_dict()
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))  # transformers reads it
    assert torch.equal(model.model.norm.weight, state["model.norm.weight"])
    assert mod.main(["tiny", str(tmp_path / "st"), "--store", "--layers", "3"]) == 0
    store = open_store(tmp_path / "st")
    assert store.num_layers == 3 and fmt.verify(store) == []
    qwen = mod.tensor_shapes(mod.make_config("qwen2.5-7b"))
    assert sum(torch.Size(s).numel() for _, s in qwen) == pytest.approx(7.6e9, rel=0.01)
