"""The server under load and faults, deterministically: the app and its decoder thread run
in this process on a real uvicorn (loopback, free port), over a real tiny decoder whose passes
wait for the test's go-ahead. So "busy", "queued" and "mid-stream" are states the test sets
up, not timings it hopes for."""
from __future__ import annotations

import json
import logging
import socket
import threading

import pytest

import specdec

from helpers.models import make_tiny_chat_model
from helpers.serve_client import HANG_GUARD, error_of, request, wait_until

uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from specdec.serve.app import AppSettings, build_app  # noqa: E402  (needs the serve extra)
from specdec.serve.worker import GenerationQueue  # noqa: E402

MODEL = "tiny"
QUEUE = 7  # one generating + 7 waiting = 8 clients answered; the 9th gets a 503


class GatedDecoder:
    """The real decoder; each pass's result is held until the test lets one more through
    (`release`) or opens the gate for good. Records the prompts it was asked for, in order,
    and how many passes each run made before it was closed."""

    def __init__(self, lm):
        self.lm = lm
        self.permits = threading.Semaphore(0)
        self.open = False
        self.prompts: list[list[int]] = []
        self.passes: list[int] = []
        self.closed: list[bool] = []

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def release(self, passes: int = 1) -> None:
        for _ in range(passes):
            self.permits.release()

    def open_gate(self) -> None:
        self.open = True
        self.release(1000)

    def stream_ids(self, ids, **kwargs):
        run = len(self.prompts)
        self.prompts.append(list(ids))
        self.passes.append(0)
        self.closed.append(False)
        try:
            for item in self.lm.stream_ids(ids, **kwargs):
                self.passes[run] += 1
                if not self.open:
                    assert self.permits.acquire(timeout=HANG_GUARD), "the test never released a pass"
                yield item
        finally:
            self.closed[run] = True


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, smollm2_tokenizer_dir):
    path = tmp_path_factory.mktemp("serve_queue") / "t"
    make_tiny_chat_model(path, smollm2_tokenizer_dir, eos_token_id=None)
    with specdec.load(path, dtype="float32", max_context=128) as lm:  # plain decoding: one token a pass
        yield lm


class FailingDecoder(GatedDecoder):
    """Its disk fails on the second pass of the first run, as a broken store's read would."""

    def stream_ids(self, ids, **kwargs):
        for i, item in enumerate(super().stream_ids(ids, **kwargs)):
            if i == 1 and len(self.prompts) == 1:
                raise OSError("/store/layer_002.bin: read failed (Input/output error)")
            yield item


class InProcessServer:
    def __init__(self, lm, queue_length: int, decoder=GatedDecoder):
        self.decoder = decoder(lm)
        self.jobs = GenerationQueue(queue_length)
        app = build_app(self.decoder, self.jobs, AppSettings(MODEL))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, "uvicorn to start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0,
                             timeout=HANG_GUARD)

    def health(self) -> dict:
        return request(self.url, "/health")[2]

    def close(self) -> None:
        self.decoder.open_gate()
        self.server.should_exit = True
        self.thread.join(HANG_GUARD)
        self.jobs.close(HANG_GUARD)


@pytest.fixture
def served(tiny_lm):
    server = InProcessServer(tiny_lm, QUEUE)
    yield server
    server.close()
    assert not any(t.name == "specdec-decoder" and t.is_alive() for t in threading.enumerate())


def ask(content: str, max_tokens: int = 3, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0, **fields}


def in_thread(fn, *args):
    """Run fn(*args) in a thread; the returned list gets its result."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def test_eight_clients_are_answered_in_arrival_order_and_the_ninth_gets_503(served, tiny_lm):
    contents = [f"question {i}" for i in range(QUEUE + 1)]
    calls = []
    for i, content in enumerate(contents):
        calls.append(in_thread(request, served.url, "/v1/chat/completions", ask(content)))
        # The next client arrives only once this one is running or queued: arrival order is known.
        wait_until(lambda: served.health()["generating"] and served.health()["queued"] == i,
                   f"request {i} to be queued")
    refused = request(served.url, "/v1/chat/completions", ask("one too many"))
    assert refused[0] == 503 and int(refused[1]["retry-after"]) >= 1
    assert error_of(refused)["code"] == "queue_full" and "--queue" in error_of(refused)["message"]
    served.decoder.open_gate()
    for thread, _ in calls:
        thread.join(HANG_GUARD)
    expected_prompts = [tiny_lm.encode_chat(ask(c)["messages"]) for c in contents]
    assert served.decoder.prompts == expected_prompts  # the decoder took them in arrival order
    for content, (_, out) in zip(contents, calls):
        status, _, body = out[0]
        assert status == 200
        assert body["choices"][0]["message"]["content"] == tiny_lm.chat(
            ask(content)["messages"], max_new_tokens=3, temperature=0).text  # none corrupted


def test_a_client_that_disconnects_mid_stream_frees_the_decoder_within_one_pass(served, tiny_lm):
    client = served.client()
    served.decoder.release(1)  # the first pass: the stream's headers and first chunk go out
    stream = client.chat.completions.create(**ask("a long story", max_tokens=80), stream=True)
    chunks = iter(stream)
    next(chunks)
    job = served.jobs._running  # its first pass went out; the next one waits at the gate
    assert job is not None
    stream.close()  # the client goes away while its reply is being generated
    # (the job itself, not `_running`: the decoder thread may drop it as soon as it sees the cancel)
    wait_until(lambda: job.cancelled, "the server to notice the disconnect")
    served.decoder.release(1)  # one more pass: at its end the job must stop
    wait_until(lambda: served.decoder.closed[0], "the cancelled run to be closed")
    assert served.decoder.passes[0] <= 2
    wait_until(lambda: not served.health()["generating"], "the decoder to be free")
    served.decoder.open_gate()
    reply = client.chat.completions.create(**ask("next"))
    assert reply.choices[0].message.content == tiny_lm.chat(ask("next")["messages"],
                                                            max_new_tokens=3, temperature=0).text


def send_then_leave(url: str, body: dict) -> socket.socket:
    """A client that sends its request and will hang up without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=HANG_GUARD)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_clients_that_leave_the_queue_are_never_generated(served, caplog):
    caplog.set_level(logging.INFO, logger="specdec.serve")
    first = in_thread(request, served.url, "/v1/chat/completions", ask("first"))
    wait_until(lambda: served.health()["generating"], "the first request to run")
    leaving = []
    for i, stream in enumerate((True, False)):  # both ways a route waits for its job
        leaving.append(send_then_leave(served.url, ask(f"leaves {i}", stream=stream)))
        wait_until(lambda: served.health()["queued"] == i + 1, f"leaving request {i} to be queued")
    for sock in leaving:
        sock.close()  # they give up waiting
    wait_until(lambda: all(job.cancelled for job in list(served.jobs._jobs.queue) if job),
               "the server to notice both have gone")
    served.decoder.open_gate()
    first[0].join(HANG_GUARD)
    assert first[1][0][0] == 200
    wait_until(lambda: not served.health()["generating"] and served.health()["queued"] == 0,
               "the queue to drain")
    assert len(served.decoder.prompts) == 1  # the two that left never reached the decoder
    wait_until(lambda: sum(" 499 " in r.getMessage() for r in caplog.records) == 2,
               "the log to say both clients left (499)")


def test_stopping_fails_the_queued_requests_with_503_and_ends_the_running_one(tiny_lm):
    server = InProcessServer(tiny_lm, 2)
    try:
        running = in_thread(request, server.url, "/v1/chat/completions", ask("runs", max_tokens=50))
        wait_until(lambda: server.health()["generating"], "the first request to run")
        queued = in_thread(request, server.url, "/v1/chat/completions", ask("waits"))
        wait_until(lambda: server.health()["queued"] == 1, "the second request to be queued")
        server.jobs.stop_soon()  # what SIGTERM does
        server.decoder.release(2)
        for thread, _ in (running, queued):
            thread.join(HANG_GUARD)
        for _, out in (running, queued):
            assert out[0][0] == 503 and error_of(out[0])["code"] == "shutting_down"
        assert server.decoder.passes[0] <= 2 and server.decoder.closed[0]
        assert len(server.decoder.prompts) == 1
    finally:
        server.close()
    assert not any(t.name == "specdec-decoder" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_read_mid_reply_is_an_error_to_that_client_and_the_next_one_is_served(tiny_lm, stream):
    server = InProcessServer(tiny_lm, 2, decoder=FailingDecoder)
    try:
        server.decoder.open_gate()
        client = server.client()
        with pytest.raises(openai.APIError, match="read failed") as raised:
            reply = client.chat.completions.create(**ask("fails", max_tokens=5), stream=stream)
            if stream:
                list(reply)  # the error arrives as an event after the first chunk
        assert "Traceback" not in str(raised.value)
        if not stream:
            assert raised.value.status_code == 500
        again = client.chat.completions.create(**ask("next"))
        assert again.choices[0].message.content == tiny_lm.chat(ask("next")["messages"],
                                                                max_new_tokens=3, temperature=0).text
    finally:
        server.close()
