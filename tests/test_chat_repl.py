"""The chat REPL: context management, commands, multi-line input, through a pipe and a
pseudo-terminal, on tiny random models with the SmolLM2 tokenizer (replies are gibberish,
which is fine: these tests are about the conversation, not the words)."""
import io
import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

import specdec
from specdec.cli.chat_repl import ChatSession, ChatSettings, LineReader, read_conversation
from specdec.sampling_params import SamplingParams

SUMMARY = "[ctx "  # every reply's summary line starts so (after a marker)


def run_chat(target, draft, *flags, stdin="", cache_dir=None):
    cmd = [sys.executable, "-m", "specdec.cli", "chat", "--target", str(target), "--dtype", "float32",
           *(["--draft", str(draft)] if draft else []), *flags]
    env = {**os.environ, "SPECDEC_CACHE": str(cache_dir)} if cache_dir else None
    return subprocess.run(cmd, input=stdin, text=True, capture_output=True, timeout=300, env=env)


@pytest.mark.slow
def test_context_overflow_keeps_the_chat_going_and_answers_every_line(chat_pair):
    target, draft = chat_pair
    questions = [f"Question number {i}: tell me a long story about the sea." for i in range(4)]
    long = "word " * 200  # alone longer than the context
    script = "\n".join(questions[:2] + [long] + questions[2:]) + "\n/stats\n"
    r = run_chat(target, draft, "--max-context", "96", "--max-new-tokens", "200",
                 "--system", "You are terse.", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    # Six replies, each with its summary; the over-long message is refused, not fatal.
    assert r.stderr.count(SUMMARY) == 4
    assert "this message needs" in r.stderr and "context holds 96" in r.stderr
    assert "dropped the" in r.stderr and "kept the system prompt" in r.stderr
    assert r.stderr.count("[context full]") == 4  # 200 tokens never fit: each reply ends there
    assert "/96 |" in r.stderr
    assert "context used / size" in r.stderr  # the /stats table


@pytest.fixture
def lm(chat_pair):
    target, draft = chat_pair
    with specdec.load(target, draft=draft, dtype="float32", max_context=256) as decoder:
        yield decoder


def session(lm, **settings):
    out, err = io.StringIO(), io.StringIO()
    return ChatSession(lm, ChatSettings(**{"max_new_tokens": 6, **settings}), out=out, err=err), out, err


def test_system_set_save_load_round_trip(lm, tmp_path):
    chat, out, err = session(lm)
    for line in ["/system Answer in one word.", "/set temperature 0.5", "/set top_k 7",
                 "/set max_tokens 5", "/set top_p 1.5", "/set nonsense 1",
                 "/set repetition_penalty 1.3", "/set repetition_window 16",
                 "/set repetition_penalty 0", "/set repetition_window -1"]:
        assert chat.command(line)
    assert "'1.5' is not a number in (0, 1]; unchanged" in err.getvalue()
    assert "'0' is not a number > 0 (1 = off); unchanged" in err.getvalue()
    assert "'-1' is not an integer >= 0" in err.getvalue()
    assert "usage: /set NAME VALUE" in err.getvalue()
    chat.reply("Hello there")
    chat.reply("And again")
    assert lm.last_stats.new_tokens <= 5
    # The second turn reused the caches: only its new tokens were prefilled.
    assert 0 < lm.last_stats.prefilled_tokens < len(lm.encode_chat(chat.messages[:-1])) // 2
    saved = tmp_path / "sub" / "chat.json"
    chat.command(f"/save {saved}")
    data = json.loads(saved.read_text())
    assert data["settings"] | {"seed": 0} == {"system": "Answer in one word.", "temperature": 0.5,
                                               "top_p": 1.0, "top_k": 7, "max_new_tokens": 5, "seed": 0,
                                               "repetition_penalty": 1.3, "repetition_window": 16}
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert not list(saved.parent.glob(".chat.json.*"))  # the temp file was renamed into place

    other, _, err2 = session(lm)  # a fresh chat with default settings
    other.command(f"/load {saved}")
    assert "loaded 5 messages" in err2.getvalue()
    assert other.messages == data["messages"]
    assert other.settings == ChatSettings("Answer in one word.", 5, SamplingParams(0.5, 7, 1.0, 1.3, 16, 0))
    other.reply("Third question")
    assert other.messages[-2] == {"role": "user", "content": "Third question"}


def test_load_rejects_files_that_are_not_conversations(lm, tmp_path):
    bad = tmp_path / "bad.json"
    for text, expected in [("not json", "not JSON"), ('{"a": 1}', "not a specdec chat file"),
                           ('{"format": "specdec-chat", "messages": [{"role": "x"}]}', "messages"),
                           ('{"format": "specdec-chat", "messages": [], "settings": {"top_p": 7}}',
                            "top_p = 7"),
                           ('{"format": "specdec-chat", "messages": [], '
                            '"settings": {"repetition_window": 2.5}}', "repetition_window = 2.5")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=expected):
            read_conversation(bad)
    # A file from before the repetition penalty keeps the session's penalty settings.
    old = tmp_path / "old.json"
    old.write_text('{"format": "specdec-chat", "messages": [], "settings": {"temperature": 0.3}}')
    defaults = ChatSettings(sampling=SamplingParams(repetition_penalty=1.1, repetition_window=32))
    settings, _ = read_conversation(old, defaults)
    s = settings.sampling
    assert (s.temperature, s.repetition_penalty, s.repetition_window) == (0.3, 1.1, 32)
    chat, _, err = session(lm)
    chat.command(f"/load {tmp_path / 'missing.json'}")
    assert "/load:" in err.getvalue()  # said, and the chat goes on


@pytest.mark.slow
def test_multi_line_message_is_one_turn(chat_pair, tmp_path):
    target, _ = chat_pair
    saved = tmp_path / "c.json"
    script = f'"""\nfirst line\n\nsecond line\n"""\nshort one\n/save {saved}\n'
    r = run_chat(target, None, "--max-new-tokens", "3", stdin=script)
    assert r.returncode == 0, r.stderr
    users = [m["content"] for m in json.loads(saved.read_text())["messages"] if m["role"] == "user"]
    assert users == ["first line\n\nsecond line", "short one"]
    assert r.stderr.count(SUMMARY) == 2


def read_until(fd, needle: bytes, seen: bytearray, count: int = 1, timeout=120, after: int = 0):
    """Read the terminal into `seen` until `needle` occurs `count` times past offset `after`."""
    deadline = time.monotonic() + timeout
    while seen[after:].count(needle) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {bytes(seen)[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            assert chunk, f"terminal closed before {needle!r}; got {bytes(seen)[-500:]!r}"
            seen += chunk


@pytest.mark.slow
def test_in_a_terminal_readline_history_multi_line_and_ctrl_d(chat_pair, tmp_path):
    target, draft = chat_pair
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat, with the pseudo-terminal as stdin, stdout and stderr
        os.environ.update(SPECDEC_CACHE=str(tmp_path / "cache"), TERM="xterm")
        os.execv(sys.executable, [sys.executable, "-m", "specdec.cli", "chat", "--target",
                                  str(target), "--draft", str(draft), "--max-new-tokens", "4"])
    seen = bytearray()
    try:
        read_until(fd, b"/help for commands", seen)
        os.write(fd, b"Hello there\r")
        read_until(fd, SUMMARY.encode(), seen, count=1)
        # Wait for the prompt: keys typed before input() runs meet the bare terminal, not readline.
        read_until(fd, b"> ", seen, after=seen.rfind(SUMMARY.encode()))
        os.write(fd, b"\x1b[A\r")  # up arrow: readline recalls "Hello there"
        read_until(fd, SUMMARY.encode(), seen, count=2)
        assert b"^[[A" not in seen
        read_until(fd, b"> ", seen, after=seen.rfind(SUMMARY.encode()))
        os.write(fd, b'"""\r')
        read_until(fd, b"... ", seen)
        os.write(fd, b'line one\rline two\r"""\r')
        read_until(fd, SUMMARY.encode(), seen, count=3)
        # The prompt after the third reply (typed-ahead echo makes earlier ones irregular).
        read_until(fd, b"> ", seen, after=seen.rfind(SUMMARY.encode()))
        os.write(fd, b"\x04")  # Ctrl-D at the prompt
        _, status = os.waitpid(pid, 0)
        try:
            while chunk := os.read(fd, 4096):
                seen += chunk
        except OSError:
            pass
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)[-800:]
    assert seen.count(SUMMARY.encode()) == 3  # three replies: typed, recalled, multi-line
    assert seen.rstrip(b" ").endswith(b"\n")  # the shell prompt starts on a new line
    history = (tmp_path / "cache" / "chat_history").read_text()
    assert "Hello there" in history and "line one" in history


def test_line_reader_from_a_pipe(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO('one\n"""\na\nb\n"""\n"""\nunterminated\n'))
    reader = LineReader(interactive=False)
    assert [reader.read_message() for _ in range(4)] == ["one", "a\nb", "unterminated", None]
