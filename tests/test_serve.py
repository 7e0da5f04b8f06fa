"""`specdec serve` as users run it: a real server in a subprocess on a free loopback port,
over a tiny random float32 pair with the SmolLM2 tokenizer, talked to with the official
`openai` package (and raw HTTP where the client would hide the status). Replies are gibberish;
what matters is that they equal SpecDecoder's for the same request."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest

import specdec

from helpers.models import make_noised_copy, make_tiny_chat_model
from helpers.serve_client import HANG_GUARD, error_of, request, wait_until

pytestmark = pytest.mark.slow  # a real `specdec serve` process per module

openai = pytest.importorskip("openai")

KEY = "test-key-0123"
MODEL = "tiny-chat"
CONTEXT = 128
HELLO = [{"role": "user", "content": "hi"}]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str = ""
    stderr: list[str] = field(default_factory=list)

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0,
                             timeout=HANG_GUARD)


def start_server(target, draft, cache_dir, *flags) -> Server:
    cmd = [sys.executable, "-m", "specdec.cli", "serve", "--target", str(target), "--draft",
           str(draft), "--dtype", "float32", "--k", "2", "--max-context", str(CONTEXT),
           "--port", "0", "--model-name", MODEL, *flags]
    # One torch thread: tiny models gain nothing from two, and the tests share the machine.
    env = {**os.environ, "SPECDEC_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop("SPECDEC_API_KEY", None)
    server = Server(subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, env=env))
    threading.Thread(target=lambda: server.stderr.extend(server.proc.stderr), daemon=True).start()

    def ready():
        assert server.proc.poll() is None, "".join(server.stderr)
        return any("serving" in line for line in server.stderr)
    wait_until(ready, "the server to start")
    line = next(line for line in server.stderr if "serving" in line)
    server.url = line.split(" at ")[1].split("/v1")[0]
    return server


def stop(server: Server) -> int:
    server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=HANG_GUARD)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("serve")
    # No EOS: every reply runs to max_tokens, so lengths are known.
    make_tiny_chat_model(root / "t", smollm2_tokenizer_dir, eos_token_id=None)
    make_noised_copy(root / "t", root / "d", scale=0.2)
    return root / "t", root / "d", root / "cache"


@pytest.fixture(scope="module")
def server(pair):
    target, draft, cache = pair
    server = start_server(target, draft, cache, "--api-key", KEY, "--queue", "4")
    yield server
    if server.proc.poll() is None:
        stop(server)


@pytest.fixture(scope="module")
def lm(pair):
    """The same decoder in this process: what the server's replies must equal."""
    target, draft, _ = pair
    with specdec.load(target, draft=draft, dtype="float32", k=2, max_context=CONTEXT) as decoder:
        yield decoder


def test_models_list_names_the_served_model(server):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_greedy_chat_equals_specdecoder_chat_and_reports_usage(server, lm):
    reply = server.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8,
                                                    temperature=0)
    expected = lm.chat(HELLO, max_new_tokens=8, temperature=0)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    usage = reply.usage.model_dump()
    assert usage["prompt_tokens"] == len(lm.encode_chat(HELLO))
    assert usage["completion_tokens"] == 8 == len(expected.token_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    stats = usage["specdec"]
    assert stats["new_tokens"] == 8 and stats["target_passes"] >= 1
    for name in ("tokens_per_pass", "acceptance_rate", "bytes_read", "seconds",
                 "time_to_first_token", "queued_seconds"):
        assert name in stats


def test_streamed_chat_arrives_in_chunks_and_equals_the_whole_reply(server, lm):
    stream = server.client().chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # one event per pass, not the reply in one piece at the end
    assert "".join(pieces) == lm.chat(HELLO, max_new_tokens=8, temperature=0).text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_completion_whole_and_streamed_equal_generate(server, lm):
    client = server.client()
    prompt = "Once upon a time"
    expected = lm.generate(prompt, max_new_tokens=6, temperature=0).text
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    assert whole.choices[0].text == expected
    assert whole.usage.prompt_tokens == len(lm.encode(prompt))
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected


def test_the_next_turn_reuses_the_cache_and_equals_chat(server, lm):
    client = server.client()
    first = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0)
    turn = HELLO + [{"role": "assistant", "content": first.choices[0].message.content},
                    {"role": "user", "content": "and then?"}]
    second = client.chat.completions.create(model=MODEL, messages=turn, max_tokens=6, temperature=0)
    assert second.choices[0].message.content == lm.chat(turn, max_new_tokens=6, temperature=0).text
    usage = second.usage.model_dump()
    assert usage["specdec"]["prefilled_tokens"] < usage["prompt_tokens"]  # the shared prefix was cached


def test_seeded_sampling_repeats_and_equals_chat(server, lm):
    """A fixed k (--k 2) makes a seeded sampled reply repeat exactly (docs/usage.md, Sampling defaults)."""
    client = server.client()
    ask = dict(model=MODEL, messages=HELLO, max_tokens=8, temperature=0.9, top_p=0.95, seed=7)
    replies = [client.chat.completions.create(**ask).choices[0].message.content for _ in range(2)]
    expected = lm.chat(HELLO, max_new_tokens=8, temperature=0.9, top_p=0.95, seed=7).text
    assert replies == [expected, expected]


def test_stop_strings_end_the_reply_as_in_chat(server, lm):
    greedy = lm.chat(HELLO, max_new_tokens=8, temperature=0).text
    stop = greedy.split()[1]  # a word inside the reply
    reply = server.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8,
                                                    temperature=0, stop=[stop])
    expected = lm.chat(HELLO, max_new_tokens=8, temperature=0, stop=[stop])
    assert reply.choices[0].message.content == expected.text
    assert stop not in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"


def chat(**fields):
    return {"model": MODEL, "messages": HELLO, "max_tokens": 2, **fields}


BAD_REQUESTS = [  # (body, status, param, words the message must contain)
    (b'{"model": "tiny-chat", "messages": [', 400, None, "not valid JSON"),
    ({"model": MODEL}, 400, "messages", "missing required field `messages`"),
    (chat(messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role", "system, developer, user, assistant"),
    (chat(temperature=-1), 400, "temperature", "[0, 2]"),
    (chat(top_p=2), 400, "top_p", "(0, 1]"),
    (chat(n=2), 400, "n", "n=1"),
    (chat(model="gpt-4o"), 404, "model", repr(MODEL)),
    (chat(messages=[{"role": "user", "content": "word " * 200}]), 400, "messages", f"context holds {CONTEXT}"),
    (chat(max_tokens=10 ** 9), 400, "max_tokens", f"context of {CONTEXT} tokens"),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools", "tool calling"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     400, "messages[0].content[0]", "only text parts"),
    (chat(frequency_penalty=0.5), 400, "frequency_penalty", "repetition_penalty"),
    (chat(stream_options={"include_usage": True}), 400, "stream_options", "stream=true"),
]


@pytest.mark.parametrize("body,status,param,words", BAD_REQUESTS,
                         ids=[f"{b[1]}-{b[2]}" for b in BAD_REQUESTS])
def test_a_bad_request_gets_its_status_and_a_json_error(server, body, status, param, words):
    answer = request(server.url, "/v1/chat/completions", body, key=KEY)
    assert answer[0] == status
    error = error_of(answer)
    assert error["param"] == param and words in error["message"], error
    assert "Traceback" not in error["message"]


def test_a_body_over_the_limit_is_413_and_the_server_keeps_serving(server, lm):
    big = chat(messages=[{"role": "user", "content": "x" * (2 << 20)}])
    answer = request(server.url, "/v1/chat/completions", big, key=KEY)
    assert answer[0] == 413 and "limit" in error_of(answer)["message"]
    # After all the bad requests above, a good one is still answered right.
    reply = server.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4,
                                                    temperature=0)
    assert reply.choices[0].message.content == lm.chat(HELLO, max_new_tokens=4, temperature=0).text


def test_a_missing_or_wrong_api_key_is_401(server):
    for key in (None, "wrong-key"):
        answer = request(server.url, "/v1/models", key=key)
        assert answer[0] == 401 and error_of(answer)["code"] == "invalid_api_key"
        assert "Authorization: Bearer" in error_of(answer)["message"]
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong-key").chat.completions.create(model=MODEL, messages=HELLO)
    assert request(server.url, "/health", key=KEY)[0] == 200


def test_every_request_is_logged_on_one_line(server):
    request(server.url, "/health", key=KEY)
    wait_until(lambda: any("GET /health 200" in line for line in server.stderr), "the log line")
    generated = [line for line in server.stderr if "POST /v1/chat/completions 200" in line]
    assert generated and "tokens=" in generated[0] and generated[0].rstrip().endswith("s")


def test_a_non_loopback_address_without_a_key_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SPECDEC_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "specdec.cli", "serve", "--host", "0.0.0.0",
                        "--target", str(tmp_path / "never-loaded")], capture_output=True,
                       text=True, timeout=HANG_GUARD, env=env)
    assert r.returncode == 2, r.stderr
    assert "--api-key" in r.stderr and "other machines" in r.stderr
    assert "Traceback" not in r.stderr


def test_sigterm_while_streaming_stops_the_server_and_exits_0(pair):
    target, draft, cache = pair
    server = start_server(target, draft, cache)  # a server of its own: this test ends it
    stream = server.client().chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=CONTEXT - 40, temperature=0, stream=True)
    next(iter(stream))  # the stream is open: the server is generating
    started = time.monotonic()
    assert stop(server) == 0, "".join(server.stderr)
    assert time.monotonic() - started < HANG_GUARD
    stream.close()
    assert any("stopped" in line for line in server.stderr)
    assert not any("Traceback" in line for line in server.stderr), "".join(server.stderr)


def test_without_the_serve_extra_the_command_says_what_to_install(monkeypatch, capsys):
    from specdec.cli import main

    monkeypatch.delitem(sys.modules, "specdec.serve.server", raising=False)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'specdec[serve]'" in err and "uvicorn" in err and "Traceback" not in err
