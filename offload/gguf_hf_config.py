"""A GGUF's Hugging Face config, read from a gguf-py reader that is already open.

transformers' AutoConfig.from_pretrained(..., gguf_file=...) parses the whole file again with
its own reader (every metadata field, the tokenizer's tens of thousands of strings included:
seconds for a 100 MB model, ~150 MB of objects), and specdec needs that parse anyway for the
tensors. This applies transformers' own key map (GGUF_CONFIG_MAPPING) to specdec's reader,
as its GGUF loader does for the families specdec runs, so a file is parsed once per load;
tests/test_gguf_parses.py checks the result against AutoConfig's for each of them.
"""
from __future__ import annotations

# llama.cpp's architecture names that transformers spells otherwise.
RENAMED_ARCHS = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}
# GGUF files of these hold only the text model.
TEXT_MODEL_TYPES = {"gemma3": "gemma3_text"}


def hf_config(reader, directory: str = "") -> dict:
    """The config dict AutoConfig builds for this GGUF in `directory` (class defaults filled in)."""
    from transformers import CONFIG_MAPPING

    values = config_values(reader)
    config = CONFIG_MAPPING[values["model_type"]].from_dict(values)
    config.name_or_path = directory  # as AutoConfig.from_pretrained(directory, gguf_file=...) sets it
    return config.to_dict()


def config_values(reader) -> dict:
    """The config keys the file's metadata sets, named as transformers names them."""
    from transformers.integrations.ggml import (GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING,
                                                _gguf_parse_value)

    arch = _string(reader, "general.architecture")
    name = arch_name(arch, _string(reader, "general.name"))
    if name not in GGUF_CONFIG_MAPPING:
        raise ValueError(f"GGUF model with architecture {arch!r} is not supported")
    config = {"tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors)}
    config.update(GGUF_CONFIG_DEFAULTS_MAPPING.get(name, {}))
    for key, field in reader.fields.items():
        prefix, _, rest = key.replace(arch, name).partition(".")
        renamed = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if renamed is None or renamed == -1:
            continue
        values = [_gguf_parse_value(field.parts[i], field.types) for i in field.data]
        value = values[0] if len(values) == 1 else values
        config[renamed] = value.replace(arch, name) if isinstance(value, str) and arch in value else value
    config["model_type"] = TEXT_MODEL_TYPES.get(config["model_type"], config["model_type"])
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in reader.fields:
        config["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    return config


def arch_name(arch: str, model_name: str) -> str:
    """transformers' name for llama.cpp's `arch` (Mistral is written as llama; transformers
    takes it for Mistral when the file's name is exactly "mistral")."""
    if arch == "llama" and model_name == "mistral":
        return "mistral"
    return RENAMED_ARCHS.get(arch, arch)


def _string(reader, key: str) -> str:
    field = reader.get_field(key)
    return field.contents() if field is not None else ""


def gguf_tokenizer(directory: str, file_name: str, config: dict | None = None):
    """AutoTokenizer.from_pretrained(directory, gguf_file=file_name), without its config parse.

    AutoTokenizer reads a GGUF's config only to pick the tokenizer class, and for most
    architectures (llama among them) it does so with transformers' legacy reader: a whole second
    parse of the file (~10 s for the 100 MB demo model on a busy 2-core machine, more than
    specdec's own). Given the config specdec already read (`hf_config`, equal to AutoConfig's),
    this picks the class as AutoTokenizer does and calls it directly; the class then reads only
    the vocabulary and merges. Where AutoTokenizer's choice depends on more than the config
    (a tokenizer_config.json beside the file, a declared tokenizer class, a Mistral backend, a
    transformers whose mapping this does not know), it is AutoTokenizer itself."""
    from transformers import AutoTokenizer

    tokenizer_class = _auto_tokenizer_class(directory, config)
    if tokenizer_class is None:
        return AutoTokenizer.from_pretrained(directory, gguf_file=file_name, trust_remote_code=False)
    return tokenizer_class.from_pretrained(directory, gguf_file=file_name)


def _auto_tokenizer_class(directory: str, config: dict | None):
    """The class AutoTokenizer ends with for a GGUF whose config is `config` (transformers 5's
    last rule: the config class's registered tokenizer, else TokenizersBackend), or None."""
    from pathlib import Path

    from transformers import CONFIG_MAPPING
    from transformers.models.auto import tokenization_auto

    if not config or config.get("tokenizer_class") or (Path(directory) / "tokenizer_config.json").exists():
        return None
    backend = getattr(tokenization_auto, "TokenizersBackend", None)  # transformers >= 5
    model_type = config.get("model_type")
    if backend is None or model_type not in CONFIG_MAPPING:  # (its .get() finds nothing)
        return None
    config_class = CONFIG_MAPPING[model_type]
    found = tokenization_auto.TOKENIZER_MAPPING.get(config_class, backend)
    if not isinstance(found, type) or found.__name__ == "MistralCommonBackend":
        return None
    return found
