"""The probed policy for this machine: from the cache when there, else measured by a probe
child (~5 s on a 2-core AVX2 machine, once per machine) and cached.

When the child fails (crashes, hangs past its time limit, answers garbage), one line says so
and this run uses the reference policy (F.linear, what transformers computes); nothing is
cached, so the next run probes again. Not a probe in this process instead: its ~200 MB of
weights do not fit the RAM plan's runtime reserve, and whatever crashed or hung the child
would crash or hang the user's process.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from offload.atomic import write_atomic

from .kernels import CACHE_VERSION, Policy
from .probe import machine
from .probe_process import ProbeFailed, run_probe_child


def cache_file(cache_dir: Path) -> Path:
    key = hashlib.sha256(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "compute" / f"probe-{key}.json"


def load_or_probe(cache_dir: Path | None, progress: bool = False, measure=run_probe_child) -> Policy:
    """The policy for this machine (see the module's docstring). `measure(progress)` times
    the paths (default: in a child process)."""
    path = cache_file(cache_dir) if cache_dir is not None else None
    cached = _read(path) if path is not None else None
    if cached is not None:
        return cached
    line = ProgressLine() if progress else None
    try:
        policy = measure(line)
    except ProbeFailed as e:
        if line:
            line.close()
        print(f"specdec: the matmul probe failed ({e}); this run uses the reference kernels "
              "(F.linear), and the next run probes again", file=sys.stderr, flush=True)
        return Policy.reference()
    if path is not None:
        _write(path, policy)
    return policy


def _read(path: Path) -> Policy | None:
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if d.get("version") == CACHE_VERSION and d.get("machine") == machine():
            return Policy.from_dict(d)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # a damaged cache entry is measured again and replaced
    return None


def _write(path: Path, policy: Policy) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(policy.as_dict(), indent=1))
    except OSError as e:  # read-only cache: probe again next time, say so once
        print(f"specdec: could not cache the matmul probe in {path} ({e}); it will run "
              "again next time", file=sys.stderr)


class ProgressLine:
    """`specdec: timing this CPU's matmul paths (once per machine): 3/9` on stderr, rewritten
    in place as the probe reports each bucket."""

    def __init__(self):
        self.open = False

    def __call__(self, done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\rspecdec: timing this CPU's matmul paths (once per machine): {done}/{total}",
              end=end, file=sys.stderr, flush=True)
        self.open = done < total

    def close(self) -> None:
        """End a line left open by a probe that stopped part way."""
        if self.open:
            print(file=sys.stderr, flush=True)
            self.open = False
