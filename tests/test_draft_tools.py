"""The demo-draft tooling (tools/draft): its command line runs from a checkout, and the
template prompts never include an evaluation prompt."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.draft.files import eval_prompts
from tools.draft.template_prompts import CHAT, build_prompts

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wrapper_script_and_the_module_parse_their_commands():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cmd in (["scripts/train_demo_draft.py"], ["-m", "tools.draft"]):
        out = subprocess.run([sys.executable, *cmd, "train", "--help"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "--init-from" in out.stdout


def test_template_prompts_leave_out_what_they_are_told_to():
    held = eval_prompts()[:3] + [CHAT[0]]
    prompts = build_prompts(300, seed=0, exclude=set(held))
    assert len(prompts) == 300
    assert not {p.lower() for p in prompts} & {p.lower() for p in held}
    assert build_prompts(300, seed=0, exclude=set(held)) == prompts  # seeded


def test_the_reply_cache_makes_its_folder(tmp_path, monkeypatch):
    """measure's default cache is results/target_greedy_replies.json, and results/ is not in a
    fresh checkout: the first reply written makes it."""
    from tools.draft import measure

    monkeypatch.setattr(measure, "greedy_reply", lambda model, ids, n, end: [7] * n)
    path = tmp_path / "results" / "replies.json"
    assert measure.ReplyCache(path).get(None, [1, 2], 3, 0) == [7, 7, 7]
    assert measure.ReplyCache(path).data and path.exists()
