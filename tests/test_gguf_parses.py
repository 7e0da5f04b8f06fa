"""A GGUF is parsed once per pack and once per load: gguf-py's reader builds every metadata
field (a real tokenizer's tens of thousands of strings: seconds for the 100 MB demo model), so
the config, the family settings and the tensors all come from the one reader open_checkpoint
made. The config read from it is the one transformers' AutoConfig reads from the file, and the
tokenizer is made from that config (AutoTokenizer would parse the file again to pick its class);
the tokenizer then reads only its vocabulary and merges."""
import gguf
import pytest
import torch
from transformers import AutoTokenizer

import specdec

from helpers.family_gguf import write_family_gguf
from helpers.family_models import make_family_model
from helpers.moe_gguf import write_moe_gguf
from helpers.tiny_llama_gguf import tiny_gguf
from offload.checkpoint import CheckpointError, open_checkpoint
from offload.gguf_hf_config import gguf_tokenizer, hf_config
from offload.pack import pack
from specdec.loading import load_resident

FAMILIES = {"gemma2": dict(query_pre_attn_scalar=16), "gemma3": dict(query_pre_attn_scalar=16),
            "phi3": {}, "phi3-longrope": {}, "qwen2_moe": {}, "qwen3_moe": {},
            "mixtral": dict(sliding_window=None)}


def family_gguf(tmp_path, family):
    if family == "llama":
        return tiny_gguf(tmp_path / "tiny.gguf")
    make_family_model(tmp_path / "hf", family, tie_word_embeddings=False, **FAMILIES[family])
    if family in ("qwen2_moe", "qwen3_moe", "mixtral"):
        return write_moe_gguf(tmp_path / "hf", tmp_path / "m.gguf")
    return write_family_gguf(tmp_path / "hf", tmp_path / "m.gguf")


@pytest.fixture
def parses(monkeypatch):
    """Counts of gguf-py reader constructions, transformers' own GGUF parses (its legacy reader,
    its fast config read) and its tokenizer's read of the vocabulary and merges alone."""
    import transformers.integrations.gguf as hf_gguf
    import transformers.integrations.gguf.reader as hf_gguf_reader
    import transformers.modeling_gguf_pytorch_utils as hf_gguf_legacy

    counts = {"GGUFReader": 0, "transformers": 0, "vocabulary": 0}

    class CountingReader(gguf.GGUFReader):
        def __init__(self, *args, **kwargs):
            counts["GGUFReader"] += 1
            super().__init__(*args, **kwargs)

    def counting(function):
        def parse(*args, **kwargs):
            string_arrays = args[1] if len(args) > 1 else kwargs.get("string_arrays")
            counts["vocabulary" if string_arrays else "transformers"] += 1
            return function(*args, **kwargs)
        return parse

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    monkeypatch.setattr(hf_gguf_legacy, "load_gguf_checkpoint",
                        counting(hf_gguf_legacy.load_gguf_checkpoint))
    fast = counting(hf_gguf_reader.read_gguf_metadata)
    monkeypatch.setattr(hf_gguf_reader, "read_gguf_metadata", fast)
    monkeypatch.setattr(hf_gguf, "read_gguf_metadata", fast)
    return counts


def test_the_counter_counts_transformers_parses(tmp_path, parses):
    from transformers import AutoConfig

    file = tiny_gguf(tmp_path / "tiny.gguf")
    AutoConfig.from_pretrained(str(tmp_path), gguf_file=file.name)
    assert parses["GGUFReader"] >= 1 and parses["transformers"] >= 1


def test_a_gguf_pack_parses_the_file_once_tokenizer_included(tmp_path, parses):
    store = pack(tiny_gguf(tmp_path / "tiny.gguf", merges=True), tmp_path / "store",
                 progress=False, note=lambda m: None)
    assert (store / "tokenizer" / "tokenizer.json").is_file()  # exported without parsing again
    assert parses == {"GGUFReader": 1, "transformers": 0, "vocabulary": 1}


def test_a_gguf_loaded_whole_is_parsed_once(tmp_path, parses):
    model = load_resident(tiny_gguf(tmp_path / "tiny.gguf"), torch.float32)
    assert model.args.num_layers == 2
    assert parses == {"GGUFReader": 1, "transformers": 0, "vocabulary": 0}


@pytest.mark.parametrize("draft", [None, "self"])
def test_a_gguf_opened_for_decoding_is_parsed_once_tokenizer_included(tmp_path, parses, draft):
    # A self-draft's tokenizer is its target's: read once, not compared with itself.
    lm = specdec.load(tiny_gguf(tmp_path / "tiny.gguf", merges=True), draft=draft, dtype="float32",
                      max_context=64, speculation="chain" if draft else None)
    assert lm.tokenizer is not None and lm.tokenizer.encode("ab") == [2]
    assert parses == {"GGUFReader": 1, "transformers": 0, "vocabulary": 1}


def test_a_second_read_of_the_tensors_parses_again(tmp_path, parses):
    ckpt = open_checkpoint(tiny_gguf(tmp_path / "tiny.gguf"))
    first, second = ckpt.state_dict(), ckpt.state_dict()  # the opening's reader is not kept
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert parses["GGUFReader"] == 2


@pytest.mark.parametrize("keep", [0.1, 0.5])
def test_a_truncated_gguf_is_refused_naming_the_file(tmp_path, keep):
    data = tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"cut\.gguf: cannot read GGUF .*download it again"):
        open_checkpoint(cut)


def same_tokenizer(ours, theirs):
    return (type(ours) is type(theirs)
            and ours.backend_tokenizer.to_str() == theirs.backend_tokenizer.to_str()
            and ours.special_tokens_map == theirs.special_tokens_map
            and ours.chat_template == theirs.chat_template)


@pytest.mark.parametrize("family", ["llama", *FAMILIES])
def test_the_tokenizer_from_the_config_is_autotokenizers(tmp_path, family, parses):
    file = tiny_gguf(tmp_path / "tiny.gguf", merges=True) if family == "llama" else family_gguf(tmp_path, family)
    config = open_checkpoint(file).config
    ours = gguf_tokenizer(str(file.parent), file.name, config)
    assert parses == {"GGUFReader": 1, "transformers": 0, "vocabulary": 1}
    assert same_tokenizer(ours, AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name))


def test_a_tokenizer_config_beside_the_gguf_leaves_the_choice_to_autotokenizer(tmp_path, parses):
    file = tiny_gguf(tmp_path / "tiny.gguf", merges=True)
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    ours = gguf_tokenizer(str(tmp_path), file.name, open_checkpoint(file).config)
    assert parses["transformers"] >= 1  # AutoTokenizer's own reading: it decides
    assert same_tokenizer(ours, AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=file.name))


@pytest.mark.parametrize("family", ["llama", *FAMILIES])
def test_the_config_from_the_open_reader_is_transformers(tmp_path, family):
    from transformers import AutoConfig

    file = family_gguf(tmp_path, family)
    expected = AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name).to_dict()
    assert hf_config(gguf.GGUFReader(str(file)), str(file.parent)) == expected


def test_the_demo_gguf_config_from_its_open_reader_is_transformers(smollm2_gguf):
    from transformers import AutoConfig

    expected = AutoConfig.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    assert hf_config(gguf.GGUFReader(str(smollm2_gguf)), str(smollm2_gguf.parent)) == expected.to_dict()


def test_the_demo_gguf_tokenizer_from_its_config_is_autotokenizers(smollm2_gguf):
    directory, name = str(smollm2_gguf.parent), smollm2_gguf.name
    ours = gguf_tokenizer(directory, name, open_checkpoint(smollm2_gguf).config)
    assert same_tokenizer(ours, AutoTokenizer.from_pretrained(directory, gguf_file=name))


def test_the_bench_and_inflate_tools_take_the_tokenizer_from_the_models_config(tmp_path, parses):
    """specdec bench's HF export of a GGUF target and tools/inflate's source load the model with
    transformers (its parse), then make the tokenizer from that model's config: the file's
    vocabulary is read, not parsed again by AutoTokenizer."""
    from transformers import AutoModelForCausalLM

    from specdec.bench.hf import export_target_hf
    from tools.inflate.builder import target_source

    file = tiny_gguf(tmp_path / "tiny.gguf", merges=True)
    AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=file.name)
    model_load = dict(parses)  # the model's own parse(s), nothing of the tokenizer
    assert model_load["transformers"] >= 1 and model_load["vocabulary"] == 0

    def after(loads, vocabularies):
        return {**{k: loads * v for k, v in model_load.items()}, "vocabulary": vocabularies}
    out = export_target_hf(file, tmp_path / "hf")
    assert parses == after(2, 1)
    source = target_source(file)
    assert parses == after(3, 2)
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=file.name)
    assert same_tokenizer(AutoTokenizer.from_pretrained(str(out)), theirs)
    assert same_tokenizer(source.tokenizer, theirs)
