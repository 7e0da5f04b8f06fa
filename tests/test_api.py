"""The public API: text in and out, streaming, chat turns reusing the caches, misuse."""
import threading

import pytest

import specdec
from helpers.models import make_tiny_chat_model
from specdec.api import DecoderBusy
from specdec.text import TextAssembler


def test_stream_joined_equals_generate_text(chat_pair):
    target, draft = chat_pair
    lm = specdec.load(target, draft=draft, dtype="float32")
    out = lm.generate("Hello there, how are", max_new_tokens=30)
    pieces = list(lm.stream("Hello there, how are", max_new_tokens=30))
    assert "".join(pieces) == out.text
    assert len(pieces) > 1 and out.text
    assert lm.last_stats.new_tokens == 30


def test_text_assembler_holds_back_split_characters(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    text = "héllo 😀 wörld 日本語"
    ids = tok.encode(text, add_special_tokens=False)
    asm = TextAssembler(tok)
    deltas = [asm.push([i]) for i in ids]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_stop_strings_cut_the_text(chat_pair):
    target, _ = chat_pair
    lm = specdec.load(target, dtype="float32")
    full = lm.generate("Once upon", max_new_tokens=20).text
    stop = full[5:8]
    out = lm.generate("Once upon", max_new_tokens=20, stop=[stop])
    assert out.text == full[:full.find(stop)]
    assert out.stats.stop_reason == "stop_string"


def test_second_chat_turn_prefills_only_new_tokens_and_matches_fresh(chat_pair):
    from specdec.cli.banner import banner

    target, draft = chat_pair
    lm = specdec.load(target, draft=draft, dtype="float32")
    assert f"draft: {draft}, " in banner(lm)  # a model draft: the banner names its path
    turn1 = [{"role": "user", "content": "Hi! Tell me about cats."}]
    first = lm.chat(turn1, max_new_tokens=12)
    ids1 = lm._chat_ids(turn1)
    assert first.stats.prefilled_tokens == len(ids1)
    turn2 = turn1 + [{"role": "assistant", "content": first.text},
                     {"role": "user", "content": "And dogs?"}]
    second = lm.chat(turn2, max_new_tokens=12)
    ids2 = lm._chat_ids(turn2)
    assert second.stats.prefilled_tokens <= len(ids2) - len(ids1)
    fresh = specdec.load(target, draft=draft, dtype="float32").chat(turn2, max_new_tokens=12)
    assert second.token_ids == fresh.token_ids
    assert fresh.stats.prefilled_tokens == len(ids2)


def test_chat_stream_yields_the_reply(chat_pair):
    target, draft = chat_pair
    lm = specdec.load(target, draft=draft, dtype="float32")
    msgs = [{"role": "user", "content": "Say something."}]
    streamed = "".join(lm.chat(msgs, max_new_tokens=10, stream=True))
    lm.reset()
    assert streamed == lm.chat(msgs, max_new_tokens=10).text


def test_keyboard_interrupt_mid_generation_leaves_a_working_decoder(chat_pair, monkeypatch):
    target, draft = chat_pair
    lm = specdec.load(target, draft=draft, dtype="float32")
    expected = specdec.load(target, draft=draft, dtype="float32").generate("A B C", max_new_tokens=16)
    model = lm.target.model
    real_forward = model.forward
    calls = {"n": 0}

    def flaky_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky_forward)
    with pytest.raises(KeyboardInterrupt):
        lm.generate("Something else entirely", max_new_tokens=16)
    again = lm.generate("A B C", max_new_tokens=16)
    assert again.token_ids == expected.token_ids


def test_concurrent_calls_are_refused_clearly(chat_pair):
    target, _ = chat_pair
    lm = specdec.load(target, dtype="float32")
    stream = lm.stream("Hello", max_new_tokens=5)
    next(stream)  # the stream now holds the decoder
    errors = []
    t = threading.Thread(target=lambda: errors.append(_catch(lambda: lm.generate("x", max_new_tokens=2))))
    t.start()
    t.join()
    assert isinstance(errors[0], DecoderBusy) and "already generating" in str(errors[0])
    stream.close()
    assert lm.generate("Hello", max_new_tokens=3).stats.new_tokens == 3


def _catch(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return e
    return None


def test_chat_without_template_is_a_clear_error(tmp_path):
    from helpers.models import make_tiny_model

    make_tiny_model(tmp_path, "llama")
    lm = specdec.load(tmp_path, dtype="float32")
    with pytest.raises(ValueError, match="no chat template"):
        lm.chat([{"role": "user", "content": "hi"}])


def test_different_vocabularies_are_refused_before_any_work(tmp_path, smollm2_tokenizer_dir):
    import json

    make_tiny_chat_model(tmp_path / "t", smollm2_tokenizer_dir)
    make_tiny_chat_model(tmp_path / "d", smollm2_tokenizer_dir)
    tok_file = tmp_path / "d" / "tokenizer.json"
    data = json.loads(tok_file.read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: same size, other meaning
    tok_file.write_text(json.dumps(data))
    with pytest.raises(specdec.api.VocabularyMismatch, match="different vocabularies"):
        specdec.load(tmp_path / "t", draft=tmp_path / "d")
