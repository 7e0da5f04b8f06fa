"""Reliability (issue 8), runtime, through the public API with the target streamed from disk:
impossible RAM budget, prompt past the context, an I/O error mid-pass, Ctrl-C (real signals)
during generate and in the chat REPL, two threads on one decoder, and a short soak.
Complements tests/test_api.py and tests/test_offload_stream.py."""
from __future__ import annotations

import errno
import io
import random
import re
import threading
import time
from pathlib import Path

import psutil
import pytest

import specdec
from helpers.interrupts import ctrl_c_storm, generate_error
from offload import format as fmt
from offload.budget import BudgetError
from offload.format import verify
from offload.reader import DirectReader
from specdec.api import DecoderBusy
from specdec.bench import soak
from specdec.engine import ContextLimitError

ROOT = Path(__file__).resolve().parent.parent

PROMPT = [5, 17, 3, 42, 8, 99, 250, 7]
OTHER = [300, 1, 2, 3, 4]
CTX = 64


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny target whose ~1.6 MB layers are streamed (not pinned) under the minimum
    budget, and a noised draft: drafts are accepted sometimes and rolled back often."""
    from offload.pack import pack

    root = tmp_path_factory.mktemp("rel_runtime")
    target, draft = soak.make_tiny_pair(root)
    store = pack(target, root / "store", dtype="float32", progress=False)
    ram = soak.streaming_budget(store, draft, dtype="float32", max_context=CTX)
    return target, draft, store, ram


def _load(pair, **kw):
    _, draft, store, ram = pair
    lm = specdec.load(store, draft=draft, ram=ram, dtype="float32", max_context=CTX, **kw)
    assert lm.plan.streamed, "the fixture must really stream layers"
    return lm


def _reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("specdec-prefetch", "specdec-read"))]


@pytest.fixture(scope="module")
def expected(pair):
    """Reference outputs from the target fully in RAM (no draft)."""
    target = pair[0]
    lm = specdec.load(target, dtype="float32", max_context=CTX)
    return {tuple(p): lm.generate(p, max_new_tokens=16).token_ids for p in (PROMPT, OTHER)}


# -- RAM budget ----------------------------------------------------------------------------------
def test_too_small_ram_is_an_error_up_front_with_the_minimum(pair, expected):
    _, draft, store, _ = pair
    before = set(_reader_threads())
    with pytest.raises(BudgetError) as e:
        specdec.load(store, draft=draft, ram="1MB", dtype="float32", max_context=CTX)
    message = str(e.value)
    assert "RAM budget 1.00 MB (given) is too small: at least" in message
    assert set(_reader_threads()) == before  # refused before any reader started
    minimum = re.search(r"Give --ram (\d+MB)", message).group(1)
    lm = specdec.load(store, draft=draft, ram=minimum, dtype="float32", max_context=CTX)
    assert lm.generate(PROMPT, max_new_tokens=16).token_ids == expected[tuple(PROMPT)]
    lm.close()


# -- context -------------------------------------------------------------------------------------
def test_prompt_longer_than_the_context_is_clear_and_harmless(pair, expected):
    lm = _load(pair)
    assert lm.generate(PROMPT, max_new_tokens=16).token_ids == expected[tuple(PROMPT)]
    too_long = list(range(1, CTX + 10))
    with pytest.raises(ContextLimitError, match=rf"prompt has {CTX + 9} tokens but the context "
                                                rf"holds {CTX}; shorten the prompt"):
        lm.generate(too_long, max_new_tokens=4)
    # the failed call changed nothing: the cached conversation is reused and still right
    out = lm.generate(PROMPT, max_new_tokens=16)
    assert out.token_ids == expected[tuple(PROMPT)]
    assert lm.generate(OTHER, max_new_tokens=16).token_ids == expected[tuple(OTHER)]
    lm.close()


# -- I/O error mid-pass --------------------------------------------------------------------------
@pytest.mark.parametrize("nth", [1, 3, 7])
def test_io_error_mid_pass_reaches_caller_and_next_call_works(pair, expected, monkeypatch, nth):
    store = pair[2]
    proc = psutil.Process()
    lm = _load(pair)
    first = lm.generate(PROMPT, max_new_tokens=16)
    assert first.token_ids == expected[tuple(PROMPT)] and first.stats.bytes_read > 0
    # Let the reader finish prefetching the next pass's first layers, so the failing read
    # is one a pass is waiting for. (A failed read while idle between passes is retried by
    # the next pass instead: see the test below.)
    assert lm.target.model.weights.wait_prefetched(timeout=30)
    fds = proc.num_fds()

    real_read = DirectReader.read_file
    state = {"armed": True, "layer_reads": 0}

    def flaky(self, path, *args, **kwargs):
        if state["armed"] and Path(path).name.startswith("layer_"):
            state["layer_reads"] += 1
            if state["layer_reads"] >= nth:  # the disk fails from the nth read on
                raise OSError(errno.EIO, "Input/output error", str(path))
        return real_read(self, path, *args, **kwargs)

    monkeypatch.setattr(DirectReader, "read_file", flaky)
    fmt.forget_verified()  # (checksums are checked again: the store must still be intact)
    error = generate_error(lm, OTHER, 16)
    assert isinstance(error, OSError) and error.errno == errno.EIO, error
    assert "layer_" in str(error)  # names the file
    assert _reader_threads() == []  # the prefetch thread and its read pool stopped
    assert proc.num_fds() <= fds
    state["armed"] = False
    assert verify(store) == []  # the store is untouched
    assert lm.generate(OTHER, max_new_tokens=16).token_ids == expected[tuple(OTHER)]
    assert lm.generate(PROMPT, max_new_tokens=16).token_ids == expected[tuple(PROMPT)]
    lm.close()
    assert _reader_threads() == []


def test_io_error_while_prefetching_between_passes_is_retried_then_surfaces(pair, expected, monkeypatch):
    """A read that fails while the reader works ahead (no pass waiting) is retried once by
    the pass that needs the layer: a transient error costs nothing, a lasting one reaches
    the caller."""
    lm = _load(pair)
    weights = lm.target.model.weights
    lm.generate(PROMPT, max_new_tokens=4)
    real_read = DirectReader.read_file
    failures = {"left": 1}

    def failing(self, path, *args, **kwargs):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_read(self, path, *args, **kwargs)

    weights._ring.stop()  # an idle, empty ring: the next start prefetches at once
    monkeypatch.setattr(DirectReader, "read_file", failing)
    weights._ring.start()
    weights._ring.thread.join(timeout=30)  # the reader died of the error, with no pass running
    assert failures["left"] == 0
    assert lm.generate(OTHER, max_new_tokens=16).token_ids == expected[tuple(OTHER)]  # retried
    failures["left"] = 10**9  # now the disk is gone for good
    with pytest.raises(OSError, match="Input/output error"):
        lm.generate(PROMPT, max_new_tokens=16)
    assert _reader_threads() == []
    failures["left"] = 0
    assert lm.generate(PROMPT, max_new_tokens=16).token_ids == expected[tuple(PROMPT)]
    lm.close()


# -- Ctrl-C ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_ctrl_c_at_random_moments_of_generate_leaves_a_correct_decoder(pair, expected):
    """SIGINT's default handler raises KeyboardInterrupt wherever the main thread is: in
    the draft, in a streamed pass waiting for a layer, in a rollback. After each one the
    decoder must still give the reference output."""
    lm = _load(pair)
    started = time.perf_counter()
    assert lm.generate(PROMPT, max_new_tokens=16).token_ids == expected[tuple(PROMPT)]
    duration = time.perf_counter() - started
    # most signals land mid-generation
    assert ctrl_c_storm(lm, [PROMPT, OTHER], expected, duration, rounds=10) >= 3
    lm.close()
    assert _reader_threads() == []


@pytest.mark.slow
def test_ctrl_c_in_the_chat_repl_stops_the_reply_and_the_next_turn_is_right(tmp_path, smollm2_tokenizer_dir,
                                                                           monkeypatch):
    from helpers.models import make_noised_copy, make_tiny_chat_model
    from specdec.cli.chat_repl import ChatSession, ChatSettings

    make_tiny_chat_model(tmp_path / "t", smollm2_tokenizer_dir, eos_token_id=None)
    make_noised_copy(tmp_path / "t", tmp_path / "d", scale=0.2)
    load = dict(draft=tmp_path / "d", dtype="float32", ram="10GB", cache_dir=tmp_path / "c")
    lm = specdec.load(tmp_path / "t", **load)
    out, err = io.StringIO(), io.StringIO()
    session = ChatSession(lm, ChatSettings(max_new_tokens=10), out=out, err=err)
    session.reply("Hello there")
    model, real_forward, calls = lm.target.model, lm.target.model.forward, {"n": 0}

    def interrupted_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second reply
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", interrupted_forward)
    session.reply("Tell me a story")
    assert "[stopped]" in err.getvalue()
    assert session.messages[-1]["role"] == "assistant"  # the partial reply, as shown
    monkeypatch.setattr(model, "forward", real_forward)
    session.reply("And then?")
    third = session.messages[-1]["content"]
    fresh = specdec.load(tmp_path / "t", **load)
    assert fresh.chat(session.messages[:-1], max_new_tokens=10).text == third
    assert third  # a real reply came


# -- two threads -----------------------------------------------------------------------------------
def test_two_threads_on_one_decoder_are_refused_or_serialised_never_corrupted(pair, expected):
    lm = _load(pair)
    outcomes: list = []
    barrier = threading.Barrier(3)

    def worker(prompt):
        barrier.wait()
        for _ in range(6):
            try:
                if random.random() < 0.3:
                    pieces = list(lm.stream(prompt, max_new_tokens=16))  # no tokenizer: no text
                    outcomes.append((prompt, lm.last_stats.new_tokens == 16 and pieces == []))
                else:
                    out = lm.generate(prompt, max_new_tokens=16)
                    outcomes.append((prompt, out.token_ids == expected[tuple(prompt)]))
            except DecoderBusy as e:
                assert "already generating" in str(e)
                outcomes.append((prompt, "busy"))

    threads = [threading.Thread(target=worker, args=(p,)) for p in (PROMPT, OTHER, PROMPT)]
    random.seed(0)
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive()
    assert len(outcomes) == 18
    assert all(ok is True or ok == "busy" for _, ok in outcomes), outcomes
    assert any(ok is True for _, ok in outcomes)
    # whatever interleaving happened, the caches are intact
    assert lm.generate(PROMPT, max_new_tokens=16).token_ids == expected[tuple(PROMPT)]
    assert lm.generate(OTHER, max_new_tokens=16).token_ids == expected[tuple(OTHER)]
    lm.close()


# -- soak (short) ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_soak_no_thread_or_fd_leak_and_flat_ram(pair):
    _, draft, store, _ = pair
    ram = soak.streaming_budget(store, draft, dtype="float32", max_context=1024)
    # k fixed: the adaptive chain may rightly stop drafting on a machine where it does not pay
    lm = specdec.load(store, draft=draft, ram=ram, dtype="float32", max_context=1024, k=4)
    assert lm.plan.streamed
    summary = soak.soak(lm, turns=6, tokens_per_turn=50, temperature=0.8, log=lambda line: None)
    assert summary["tokens"] == 300
    assert summary["rejected_drafts"] > 50  # many rollbacks
    assert summary["threads"]["end"] <= summary["threads"]["after_turn_1"]
    assert summary["fds"]["end"] <= summary["fds"]["after_turn_1"] + 1  # + a layer mid-read
    assert summary["rss_mb"]["growth_after_turn_1"] < 16, summary["rss_mb"]
    lm.close()
    assert _reader_threads() == []
