"""Reliability (issue 8), models: absurd configs, config/checkpoint disagreement, vocabularies,
pickles never unpickled, remote code never run. Complements tests/test_load_errors.py."""
from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

import specdec
from helpers.models import make_tiny_model
from offload.checkpoint import CheckpointError
from specdec.api import VocabularyMismatch
from specdec.speculate.registry import Speculation
from specdec.config import ConfigError
from specdec.weights import WeightsError


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("rel_models") / "llama"
    make_tiny_model(path, "llama")
    return path


def _edited(base, tmp_path, **changes):
    path = tmp_path / "m"
    shutil.copytree(base, path)
    cfg = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is _DELETE:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))
    return path


_DELETE = object()


@pytest.mark.parametrize("changes, error, match", [
    # absurd values: each refused by name, before any weight is used
    (dict(head_dim=-4), ConfigError, "head_dim must be a positive integer"),
    (dict(num_attention_heads=0), ConfigError, "num_attention_heads must be a positive integer"),
    (dict(intermediate_size=-128), ConfigError, "intermediate_size must be a positive integer"),
    (dict(max_position_embeddings=0), ConfigError, "max_position_embeddings must be a positive"),
    (dict(num_hidden_layers=10**9), ConfigError, "num_hidden_layers=1000000000 is implausibly large"),
    (dict(num_attention_heads=10**19), ConfigError, "implausibly large"),
    (dict(rms_norm_eps=-1.0), ConfigError, "rms_norm_eps must be a positive number"),
    (dict(rms_norm_eps="tiny"), ConfigError, "rms_norm_eps must be a positive number"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 0}), ConfigError,
     "rope_theta must be a positive number"),
    (dict(rope_parameters=[1, 2], rope_scaling=_DELETE), ConfigError, "rope_parameters must be a JSON object"),
    (dict(sliding_window=-1, model_type="mistral", rope_scaling=_DELETE, rope_parameters=_DELETE),
     ConfigError, "sliding_window must be a positive integer"),
    (dict(tie_word_embeddings="yes"), ConfigError, "tie_word_embeddings must be true or false"),
    (dict(hidden_size=64, num_attention_heads=5, num_key_value_heads=5, head_dim=_DELETE),
     ConfigError, r"hidden_size \(64\) is not a multiple of num_attention_heads \(5\)"),
    # plausible values that disagree with the weights: refused, never a silently smaller model
    (dict(num_hidden_layers=2), WeightsError, "has 3 decoder layers but its config says num_hidden_layers=2"),
    (dict(num_hidden_layers=5), WeightsError, "has 3 decoder layers but its config says num_hidden_layers=5"),
    (dict(intermediate_size=64), WeightsError, r"mlp.gate_proj.weight has shape \(128, 64\) but config.json implies \(64, 64\)"),
    (dict(head_dim=8), WeightsError, r"q_proj.weight has shape \(64, 64\) but config.json implies \(32, 64\)"),
])
def test_absurd_or_inconsistent_config_is_refused(base_model, tmp_path, changes, error, match):
    path = _edited(base_model, tmp_path, **changes)
    with pytest.raises(error, match=match) as e:
        specdec.load(path, dtype="float32")
    assert str(path) in str(e.value)  # names the file (config.json or the checkpoint dir)
    assert "restore" in str(e.value) or "download" in str(e.value)  # and the fix


def test_weights_the_config_does_not_use_are_refused(tmp_path):
    # qwen2 has qkv biases; a config saying attention_bias=false would silently drop them.
    make_tiny_model(tmp_path / "q", "qwen2")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    cfg["model_type"], cfg["attention_bias"] = "llama", False
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="tensors the config does not use.*q_proj.bias"):
        specdec.load(tmp_path / "q", dtype="float32")


def test_store_whose_config_disagrees_with_its_tensors_is_refused(base_model, tmp_path):
    from offload.format import StoreError
    from offload.pack import pack

    store = pack(base_model, tmp_path / "s", dtype="float32", progress=False)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["config"]["intermediate_size"] = 32
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="manifest.json.*mlp.gate_proj.weight has shape.*specdec pack SRC OUT"):
        specdec.load(store, dtype="float32")
    manifest["config"]["rms_norm_eps"] = -1
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="manifest.json: rms_norm_eps.*specdec pack SRC OUT"):
        specdec.load(store, dtype="float32")


def test_unsupported_architecture_in_a_store_is_refused(base_model, tmp_path):
    from offload.pack import pack

    store = pack(base_model, tmp_path / "s", dtype="float32", progress=False)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["config"]["model_type"] = "gpt_neox"
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"manifest.json: model_type 'gpt_neox' is not supported.*llama, mistral, qwen2, qwen3"):
        specdec.load(store, dtype="float32")


# -- vocabularies --------------------------------------------------------------------------------
def test_token_id_models_with_different_vocab_sizes_are_refused(base_model, tmp_path):
    make_tiny_model(tmp_path / "d", "llama", vocab_size=50)
    with pytest.raises(VocabularyMismatch, match=r"vocab_size 50.*vocab_size 96.*different vocabularies"):
        specdec.load(base_model, draft=tmp_path / "d", dtype="float32")


def test_draft_with_smaller_padded_vocab_cannot_crash_and_stays_exact(base_model, tmp_path, monkeypatch):
    """Same tokens, but the draft's embedding table is padded less than the target's (as
    Qwen2.5-0.5B vs 7B): a target id past the draft's table must not crash the draft."""
    from specdec.api import SpecDecoder
    from specdec.loading import load_resident

    make_tiny_model(tmp_path / "d", "llama", vocab_size=50, seed=1)
    target = load_resident(base_model, torch.float32)
    draft = load_resident(tmp_path / "d", torch.float32)
    plain = specdec.load(base_model, dtype="float32").generate([70, 80, 90], max_new_tokens=12)
    # equal tokenizers would pass the vocabulary check; these token-id models cannot show it
    monkeypatch.setattr(specdec.api, "check_same_vocabulary", lambda *a: None)
    lm = SpecDecoder(target, draft, 64, Speculation(k=3))
    out = lm.generate([70, 80, 90], max_new_tokens=12)  # ids >= 50 reach the draft
    assert out.token_ids == plain.token_ids and out.stats.drafted > 0


# -- pickles: refused, never unpickled ----------------------------------------------------------
class _Boom:
    """Unpickling this creates the marker file: proof that something unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.pth", "model.ckpt"])
def test_malicious_pickle_is_refused_and_never_loaded(base_model, tmp_path, name):
    from offload.pack import pack

    marker = tmp_path / "UNPICKLED"
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(base_model / "config.json", evil / "config.json")
    (evil / name).write_bytes(pickle.dumps(_Boom(marker)))
    assert not marker.exists()
    attempts = [lambda: specdec.load(evil), lambda: specdec.load(evil / name),
                lambda: specdec.load(base_model, draft=evil),
                lambda: specdec.load(evil, ram="1GB", cache_dir=tmp_path / "c"),
                lambda: pack(evil, tmp_path / "s", progress=False)]
    for attempt in attempts:
        with pytest.raises(CheckpointError, match=f"{name}: pickled checkpoints are refused.*safetensors"):
            attempt()
    assert not marker.exists()


# -- remote code: never imported ----------------------------------------------------------------
def _plant_remote_code(path, marker):
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            "class Evil:\n    pass\nEvilModel = EvilConfig = EvilTokenizer = Evil\n")
    for module in ("modeling_evil", "configuration_evil", "tokenization_evil"):
        (path / f"{module}.py").write_text(code)
    cfg = json.loads((path / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                       "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    cfg["trust_remote_code"] = True
    (path / "config.json").write_text(json.dumps(cfg))


def test_config_auto_map_code_is_never_run(base_model, tmp_path):
    from offload.pack import pack

    marker = tmp_path / "REMOTE_CODE_RAN"
    path = tmp_path / "m"
    shutil.copytree(base_model, path)
    _plant_remote_code(path, marker)
    # a supported model_type: the auto_map is ignored, our own implementation runs
    expected = specdec.load(base_model, dtype="float32").generate([1, 2, 3], max_new_tokens=5)
    out = specdec.load(path, dtype="float32").generate([1, 2, 3], max_new_tokens=5)
    assert out.token_ids == expected.token_ids
    store = pack(path, tmp_path / "s", dtype="float32", progress=False)
    assert specdec.load(store, dtype="float32").generate([1, 2, 3], max_new_tokens=5).token_ids == expected.token_ids
    # a custom model_type: refused, not imported
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "evil"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type 'evil' is not supported"):
        specdec.load(path)
    assert not marker.exists()


def test_tokenizer_auto_map_code_is_refused_and_never_run(tmp_path, smollm2_tokenizer_dir):
    from helpers.models import make_tiny_chat_model

    marker = tmp_path / "REMOTE_CODE_RAN"
    path = tmp_path / "m"
    make_tiny_chat_model(path, smollm2_tokenizer_dir)
    _plant_remote_code(path, marker)
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    tok_cfg["tokenizer_class"] = "EvilTokenizer"
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    with pytest.raises(CheckpointError, match="tokenizer_config.json: the tokenizer needs custom "
                                              "Python code.*never runs code.*remove auto_map"):
        specdec.load(path, dtype="float32")
    assert not marker.exists()
