"""The matmul probe's child never hangs or breaks a load: real subprocesses, an empty cache,
SPECDEC_KERNELS unset (so the probe path runs, not the reference policy the suite pins).

A user's script without a main guard, and a script read from stdin, load and generate (the
child has its own entry point: the caller's main module is never imported again); a child
that crashes, answers garbage or hangs costs one warning line and the reference kernels, and
nothing is cached; the README's Python example runs as a script on a fresh cache."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.demo_cache import demo_cache
from helpers.models import make_tiny_chat_model

from specdec.compute import probe_process
from specdec.compute.kernels import CANDIDATES, PLAIN_KINDS

ROOT = Path(__file__).resolve().parent.parent
WARNING = "matmul probe failed"

LOAD_AND_GENERATE = """
import specdec
lm = specdec.load({target!r}, dtype="float32")
out = lm.generate([1, 5, 9, 13], max_new_tokens=6)
print("GENERATED", len(out.token_ids))
"""  # no `if __name__ == "__main__":`, as most first scripts are written


def _env(cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SPECDEC_KERNELS"}
    env.update(SPECDEC_CACHE=str(cache), PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), **extra)
    return env


def _run(args, cache: Path, stdin: str | None = None, cwd=None, **extra) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True,
                         timeout=240, env=_env(cache, **extra), cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _stderr_lines(stderr: str) -> list[str]:
    """stderr's lines, without the probe's progress line (rewritten in place with \\r)."""
    return [s for s in re.split(r"[\r\n]", stderr)
            if s.strip() and not s.startswith("specdec: timing this CPU's matmul paths")]


def _cached(cache: Path) -> list[Path]:
    return sorted((cache / "compute").glob("probe-*.json"))


def _check_probed(out, cache: Path) -> None:
    assert "GENERATED 6" in out.stdout
    assert _stderr_lines(out.stderr) == [], out.stderr
    # the progress line counts the buckets as the child reports them, 0/9 to 9/9
    counts = re.findall(r"matmul paths \(once per machine\): (\d+)/9", out.stderr)
    assert counts == [str(i) for i in range(10)], out.stderr
    [cached] = _cached(cache)
    policy = json.loads(cached.read_text())
    for kind in PLAIN_KINDS:
        assert set(policy["paths"][kind].values()) <= set(CANDIDATES[kind])


@pytest.mark.slow  # a real process
def test_a_script_without_a_main_guard_loads_probes_once_and_generates(tiny_llama, tmp_path):
    path, _ = tiny_llama
    script = tmp_path / "quick.py"
    script.write_text(LOAD_AND_GENERATE.format(target=str(path)))
    cache = tmp_path / "cache"
    _check_probed(_run([str(script)], cache, cwd=tmp_path), cache)
    again = _run([str(script)], cache, cwd=tmp_path)  # the cache answers: no probe, no line
    assert "GENERATED 6" in again.stdout and again.stderr.strip() == "", again.stderr


@pytest.mark.slow  # a real process
def test_a_script_read_from_stdin_loads_and_generates(tiny_llama, tmp_path):
    path, _ = tiny_llama
    cache = tmp_path / "cache"
    out = _run(["-"], cache, stdin=LOAD_AND_GENERATE.format(target=str(path)), cwd=tmp_path)
    _check_probed(out, cache)


FAILING_CHILDREN = {
    # a Python error part way through (a traceback on the child's stderr)
    "raises": ("import json; print(json.dumps({'done': 0, 'of': 9}), flush=True); "
               "raise SystemExit('probe child: boom')", "exited with status 1"),
    # killed by a signal, as a crashing native kernel would be
    "killed": ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL"),
    # exits 0 with output that is no policy
    "garbage": ("print('hello'); print('{\"policy\": {\"paths\": 3}}')", "unreadable policy"),
    # reports once, then never again: stopped at the time limit
    "hangs": ("import json, time; print(json.dumps({'done': 0, 'of': 9}), flush=True); "
              "time.sleep(600)", "no progress for 2 s"),
}


@pytest.mark.slow  # a real process
@pytest.mark.parametrize("child", sorted(FAILING_CHILDREN))
def test_a_failing_probe_child_costs_one_line_and_the_load_goes_on(child, tiny_llama, tmp_path):
    path, _ = tiny_llama
    code, reason = FAILING_CHILDREN[child]
    script = (f"import sys\nimport specdec.compute.probe_process as pp\n"
              f"pp.CHILD = [sys.executable, '-c', {code!r}]\n"
              + LOAD_AND_GENERATE.format(target=str(path)))
    cache = tmp_path / "cache"
    out = _run(["-c", script], cache, cwd=tmp_path, SPECDEC_PROBE_TIMEOUT="2")
    assert "GENERATED 6" in out.stdout
    [line] = _stderr_lines(out.stderr)
    assert WARNING in line and reason in line and "reference kernels" in line, line
    assert _cached(cache) == []  # not cached: the next run probes again


def _readme_python_example() -> str:
    """The first python block under the README's "Python API" heading."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^#+ Python API\b.*?^```python\n(.*?)^```", text, re.M | re.S)
    assert section, "README.md has no ```python block under a 'Python API' heading"
    return section.group(1)


def _answer_end_of_text_at_once(path: Path, eos: int) -> None:
    """Make a saved tiny chat model reply end-of-text as its first token, greedy or sampled:
    every embedding gets a large dimension 0, which the output layer reads for `eos` only.
    The README's calls (128, 128 and 256 new tokens) then cost a pass each."""
    from safetensors.torch import load_file, save_file

    state = load_file(f"{path}/model.safetensors")
    state["model.embed_tokens.weight"][:, 0] += 100.0
    head = state["lm_head.weight"]
    head.zero_()
    head[eos, 0] = 10.0  # logit ~80 against 0 for the other 49151: p(eos) ~ 1
    save_file(state, f"{path}/model.safetensors", metadata={"format": "pt"})


@pytest.mark.slow  # a real process
def test_the_readme_python_example_runs_as_a_script_on_a_fresh_cache(tmp_path, smollm2_tokenizer_dir,
                                                                    smollm2_store, smollm2_gguf):
    """Its model paths ("path/to/..."): the first is the target, the others the draft; a tiny
    chat model and a copy stand in. Everything else runs as written, the demo pair's load
    included, on a cache with no probe result yet. The demo store is in it already, as a first
    `specdec chat` leaves it (first-use packing: tests/test_cli.py's demo pipe)."""
    from transformers import AutoTokenizer

    target, draft = tmp_path / "t", tmp_path / "d"
    make_tiny_chat_model(target, smollm2_tokenizer_dir)
    _answer_end_of_text_at_once(target, AutoTokenizer.from_pretrained(target).eos_token_id)
    shutil.copytree(target, draft)
    code = _readme_python_example()
    placeholders = list(dict.fromkeys(re.findall(r"path/to/[^\"']+", code)))
    assert placeholders, "the README's Python example names no path/to/... model"
    for i, name in enumerate(placeholders):
        code = code.replace(name, str(target if i == 0 else draft))
    script = tmp_path / "readme_example.py"
    script.write_text(code + "\nprint('\\nREADME EXAMPLE DONE')\n")
    cache = demo_cache(tmp_path / "cache", smollm2_store, smollm2_gguf)
    out = _run([str(script)], cache, cwd=tmp_path)
    assert "README EXAMPLE DONE" in out.stdout and "target_passes" in out.stdout
    assert WARNING not in out.stderr, out.stderr
    assert len(_cached(cache)) == 1  # probed once, cached


@pytest.mark.slow  # a real process
def test_the_child_reports_each_bucket_and_returns_a_policy_with_this_machines_view():
    seen = []
    policy = probe_process.run_probe_child(lambda done, total: seen.append((done, total)),
                                           shape=(64, 128))
    assert seen == [(i, 9) for i in range(10)]
    for kind in PLAIN_KINDS:
        assert set(policy.paths[kind].values()) <= set(CANDIDATES[kind])
    assert policy.timings["q4"][8]["int4"] > 0
    from specdec.compute.probe import machine
    assert policy.machine == machine()


def test_the_child_gets_this_process_thread_count(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    cmd = probe_process.child_command((8, 16))
    assert cmd[-4:] == ["--threads", "3", "--shape", "8x16"]
    assert cmd[:3] == [sys.executable, "-m", "specdec.compute.probe_child"]


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan"])
def test_a_bad_time_limit_is_a_clear_error(value, monkeypatch):
    monkeypatch.setenv(probe_process.TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match="SPECDEC_PROBE_TIMEOUT.*number > 0"):
        probe_process.timeout_s()


def test_the_time_limit_defaults_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv(probe_process.TIMEOUT_ENV, raising=False)
    assert probe_process.timeout_s() == probe_process.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(probe_process.TIMEOUT_ENV, "7.5")
    assert probe_process.timeout_s() == 7.5


def test_a_child_that_cannot_start_is_a_failed_probe(monkeypatch, tmp_path, capsys):
    from specdec.compute import probe_cache
    from specdec.compute.kernels import REFERENCE

    monkeypatch.setattr(probe_process, "CHILD", [str(tmp_path / "no-such-python")])
    assert probe_cache.load_or_probe(tmp_path / "cache", progress=True) == REFERENCE
    [line] = capsys.readouterr().err.splitlines()
    assert WARNING in line and "could not start" in line and "no-such-python" in line, line
    assert _cached(tmp_path / "cache") == []
