"""Where the draft tooling reads and writes, and how (atomically, offload.atomic)."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

from offload.atomic import replacing
from offload.atomic import write_atomic as write_file_atomic
from specdec.configs import resource

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "results" / "demo_draft_data"
PROMPTS_TOML = resource("demo_prompts.toml")
TOPK = 16


def write_atomic(path: Path, write) -> None:
    """write(tmp), then tmp replaces path durably (offload.atomic)."""
    with replacing(path) as tmp:
        write(tmp)


def write_json_atomic(path: Path, data) -> None:
    write_file_atomic(path, json.dumps(data, indent=2) + "\n")


def eval_prompts() -> list[str]:
    """The demo draft's 20 evaluation prompts (specdec/configs/demo_prompts.toml, docs/demo-draft.md)."""
    return list(tomllib.loads(PROMPTS_TOML.read_text())["prompts"])
