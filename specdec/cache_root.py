"""Where specdec keeps what it derives (packed stores, the demo model, the matmul probe,
self-draft substitutes, chat history, benchmark workloads)."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SPECDEC_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir` when given, else $SPECDEC_CACHE, else ~/.cache/specdec."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "specdec").expanduser()
