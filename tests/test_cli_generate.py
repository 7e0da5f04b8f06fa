"""`specdec generate` streaming and Ctrl-C, flag checks before loading, exit codes, `info`."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers.cli import cli_in_process
from helpers.interrupts import python_sigint
from helpers.models import make_tiny_chat_model


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory, smollm2_tokenizer_dir):
    """A tiny chat model with a long context and no end token: it writes until told to stop."""
    path = tmp_path_factory.mktemp("long_context") / "m"
    make_tiny_chat_model(path, smollm2_tokenizer_dir, eos_token_id=None, max_position_embeddings=8192)
    return path


@pytest.mark.slow
def test_generate_streams_and_keeps_partial_text_on_sigint(long_context_model):
    cmd = [sys.executable, "-m", "specdec.cli", "generate", "--target", str(long_context_model),
           "--prompt", "Tell me a story", "--max-new-tokens", "6000", "--dtype", "float32"]
    with python_sigint():  # the child must not inherit SIGINT ignored from a background job
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = os.read(proc.stdout.fileno(), 64)  # blocks until the first text is written
        assert first
        assert proc.poll() is None  # text arrived while it was still generating: it streams
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = (first + rest).decode(), err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert len(out.strip()) > len(first.decode().strip())  # more than the first read, kept
    assert out.endswith("\n")
    assert "[stopped]" in err and "tokens/pass" in err  # stats still printed, on stderr
    assert "[stopped]" not in out


def test_generate_applies_the_chat_template_unless_raw(long_context_model, capsys):
    common = ["--target", str(long_context_model), "--prompt", "Hello", "--max-new-tokens", "3",
              "--json", "--dtype", "float32"]
    chat = json.loads(cli_in_process(capsys, "generate", *common).stdout)
    raw = json.loads(cli_in_process(capsys, "generate", *common, "--raw").stdout)
    # The template wraps "Hello" in a system prompt and role markers: many more prompt tokens.
    assert chat["stats"]["prefilled_tokens"] > raw["stats"]["prefilled_tokens"] + 10
    assert chat["stats"]["stop_reason"] == "max_new_tokens"
    assert chat["stats"]["time_to_first_token"] > 0


def test_generate_with_a_too_long_prompt_is_a_clear_error(long_context_model, capsys):
    r = cli_in_process(capsys, "generate", "--target", str(long_context_model), "--max-context", "16",
                "--prompt", "word " * 40, "--raw")
    assert r.returncode == 1
    assert "the prompt has" in r.stderr and "context holds 16" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-p", "2"], "top-p must be in (0, 1]"),
    (["--max-context", "0"], "the context must hold >= 2 tokens"),
    (["--k", "-3"], "drafted tokens per pass must be >= 1"),
    (["--max-new-tokens", "0"], "must be >= 1"),
    (["--ram", "12XB"], "cannot read size '12XB'"),
    (["--repetition-penalty", "0"], "repetition-penalty must be > 0"),
    (["--repetition-penalty", "nan"], "not a finite number"),
    (["--repetition-window", "-5"], "must be >= 0"),
])
def test_flag_errors_come_before_any_model_loads(tmp_path, capsys, flags, message):
    # The target does not exist: had anything loaded, the error would name it instead.
    missing = str(tmp_path / "no-such-model")
    for command in ("chat", "generate"):
        extra = ["--prompt", "x"] if command == "generate" else []
        r = cli_in_process(capsys, command, "--target", missing, *extra, *flags)
        assert r.returncode == 2, r.stderr
        assert message in r.stderr and "no-such-model" not in r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_flag_error_from_the_console_script_is_exit_2():
    # One real process through the installed entry point: the exit status a shell sees.
    script = shutil.which("specdec", path=os.path.dirname(sys.executable))
    assert script, f"the console script is missing beside {sys.executable}: pip install -e ."
    r = subprocess.run([script, "generate", "--prompt", "x", "--temperature", "-1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "temperature must be >= 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_help_documents_the_exit_codes(capsys):
    for command in ([], ["chat"], ["generate"], ["info"], ["serve"]):
        r = cli_in_process(capsys, *command, "--help")
        assert r.returncode == 0
        assert "exit status" in r.stdout and "please report" in r.stdout and "130" in r.stdout


def test_an_internal_error_is_exit_3_with_traceback(monkeypatch, capsys):
    from specdec.cli import commands as cli  # main() looks cmd_info up there

    def broken(args):
        raise AssertionError("cache length went negative")

    monkeypatch.setattr(cli, "cmd_info", broken)
    assert cli.main(["info"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "cache length went negative" in err and "please report" in err


@pytest.mark.slow
def test_info_is_readable_and_json_on_request(tmp_path, smollm2_tokenizer_dir, capsys):
    target = tmp_path / "t"
    make_tiny_chat_model(target, smollm2_tokenizer_dir, intermediate_size=4096)
    common = ["info", "--target", str(target), "--ram", "420MB", "--cache-dir", str(tmp_path / "c")]
    r = cli_in_process(capsys, *common)
    assert r.returncode == 0, r.stderr
    assert "RAM plan" in r.stdout and "pinned layers" in r.stdout
    assert "(--ram)" in r.stdout and "(given)" not in r.stdout
    assert r.stdout.count("420.00 MB") == 2  # the banner's budget and the table's budget row
    assert len(r.stdout.splitlines()) < 25
    assert "compute: bfloat16 activations on " in r.stdout  # the ISA and the matmul paths
    data = json.loads(cli_in_process(capsys, *common, "--json").stdout)
    assert data["plan"]["budget_bytes"] == 420_000_000 and data["max_context"] == 256
    assert data["compute"]["isa"] == torch.backends.cpu.get_cpu_capability()
    assert data["compute"]["kernels"] == "reference (F.linear)"  # tests pin SPECDEC_KERNELS
