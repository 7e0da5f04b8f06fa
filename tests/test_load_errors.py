"""Bad input to loading: each a clear error naming the file and the fix."""
import json

import pytest
import torch

import specdec
from helpers.models import make_tiny_model
from offload.checkpoint import CheckpointError
from specdec.config import ConfigError


def test_unsupported_model_type_lists_supported(tmp_path):
    make_tiny_model(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config.json: model_type 'gpt2' is not supported.*llama, mistral, qwen2, qwen3"):
        specdec.load(tmp_path)


@pytest.mark.parametrize("key,value", [("hidden_size", 0), ("num_hidden_layers", -2), ("vocab_size", "big")])
def test_absurd_config_values(tmp_path, key, value):
    make_tiny_model(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=f"{key} must be a positive integer"):
        specdec.load(tmp_path)


def test_unsupported_rope_scaling(tmp_path):
    make_tiny_model(tmp_path, "mistral")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="rope scaling 'yarn' is not supported"):
        specdec.load(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        specdec.load(tmp_path / "nope")


def test_missing_config(tmp_path):
    make_tiny_model(tmp_path, "llama")
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        specdec.load(tmp_path)


def test_missing_weights(tmp_path):
    make_tiny_model(tmp_path, "llama")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*.safetensors weights found"):
        specdec.load(tmp_path)


def test_missing_tensor_names_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    make_tiny_model(tmp_path, "llama")
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight"):
        specdec.load(tmp_path)


def test_truncated_safetensors(tmp_path):
    make_tiny_model(tmp_path, "llama")
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors"):
        specdec.load(tmp_path)


def test_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    make_tiny_model(tmp_path, "llama")
    (tmp_path / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    import pickle
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(CheckpointError, match="pytorch_model.bin: pickled checkpoints are refused"):
        specdec.load(tmp_path)
    with pytest.raises(CheckpointError, match="pickled checkpoints are refused"):
        specdec.load(tmp_path / "pytorch_model.bin")


def test_corrupt_config_json(tmp_path):
    make_tiny_model(tmp_path, "llama")
    (tmp_path / "config.json").write_bytes(bytes(range(256)))
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        specdec.load(tmp_path)


def test_fp16_dtype_refused_with_reason(tmp_path):
    make_tiny_model(tmp_path, "llama")
    with pytest.raises(ValueError, match="fp16 arithmetic on CPU"):
        specdec.load(tmp_path, dtype="float16")


def test_string_prompt_without_tokenizer(tmp_path):
    make_tiny_model(tmp_path, "llama")
    lm = specdec.load(tmp_path, dtype="float32")
    with pytest.raises(ValueError, match="no tokenizer files; pass the prompt as a list of token ids"):
        lm.generate("hello")
    with pytest.raises(ValueError, match=r"token ids must be integers in \[0, 96\)"):
        lm.generate([1, 500])
