"""Running the probe in a child process, under a time limit.

The child (specdec/compute/probe_child.py) is a plain subprocess of this Python with its own
entry point, this process's thread count and environment (the ISA variables the cache key
holds). Its weights (~200 MB at their peak) never count in this process's resident memory,
which must stay inside the user's RAM budget. It reports each bucket as it goes; one that
stays silent longer than the limit is stopped, as is one that crashes or answers garbage:
`ProbeFailed` says which, and the caller decides what to fall back to.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import torch

from .kernels import Policy
from . import probe

TIMEOUT_ENV = "SPECDEC_PROBE_TIMEOUT"
# Seconds the child may go without a report: starting up (importing torch) and each bucket
# take a few seconds at most. A limit per report, not on the whole probe, so a slow machine
# finishes its probe while a hung child is stopped as soon.
DEFAULT_TIMEOUT_S = 30.0
# The child's command before its arguments; None: this Python running probe_child. Tests
# point it at a child that crashes or hangs.
CHILD: list[str] | None = None
ROOT = Path(__file__).resolve().parents[2]  # the directory holding the specdec package


class ProbeFailed(RuntimeError):
    """The probe child crashed, hung or answered something unreadable."""


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"${TIMEOUT_ENV}={text!r}: give the seconds the matmul probe may go "
                         f"without progress, a number > 0 (default {DEFAULT_TIMEOUT_S:g})")
    return value


def child_command(shape=None) -> list[str]:
    shape = shape or probe.PROBE_SHAPE
    base = CHILD if CHILD is not None else [sys.executable, "-m", "specdec.compute.probe_child"]
    return [*base, "--threads", str(torch.get_num_threads()), "--shape", f"{shape[0]}x{shape[1]}"]


def run_probe_child(progress=None, shape=None, timeout: float | None = None) -> Policy:
    """The probe's policy, measured in a child on a weight of `shape` (default PROBE_SHAPE);
    `progress(done, total)` as it reports."""
    limit = timeout_s() if timeout is None else timeout
    cmd = child_command(shape)
    if not cmd[0]:  # an embedding application that reports no interpreter
        raise ProbeFailed("no Python interpreter to run it in (sys.executable is empty)")
    try:
        # cwd: the child imports the same specdec as this process, whatever the caller's cwd
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
    except OSError as e:
        raise ProbeFailed(f"could not start {cmd[0]!r}: {e}") from e
    lines: queue.Queue = queue.Queue()
    errors: collections.deque = collections.deque(maxlen=20)
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, lines.put), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, errors.append), daemon=True)]
    for t in pumps:
        t.start()
    try:
        found = _read_reports(lines, limit, progress)
        code = proc.wait(timeout=limit) if found is None else proc.poll()
    except subprocess.TimeoutExpired:
        found, code = None, None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for t in pumps:
            t.join(timeout=1.0)
    return _policy_or_fail(found, code, list(errors), limit)


def _pump(stream, put) -> None:
    for line in stream:
        put(line)
    put(None)


def _read_reports(lines: queue.Queue, limit: float, progress) -> dict | None:
    """The child's policy dict, or None when it closed its output without one. Raises
    ProbeFailed when no line comes within `limit` seconds."""
    while True:
        try:
            line = lines.get(timeout=limit)
        except queue.Empty:
            raise ProbeFailed(f"no progress for {limit:g} s; ${TIMEOUT_ENV} sets the limit") from None
        if line is None:
            return None
        try:
            report = json.loads(line)
        except ValueError:
            continue  # not a report (a library printing to stdout): the protocol's lines are JSON
        if not isinstance(report, dict):
            continue
        if "policy" in report:
            return report["policy"]
        if progress and "done" in report:
            progress(int(report["done"]), int(report["of"]))


def _policy_or_fail(found: dict | None, code: int | None, errors: list, limit: float) -> Policy:
    err_lines = [e for e in (s.rstrip("\n") for s in errors if s) if e.strip()]
    if found is None:
        raise ProbeFailed(f"the probe process {_exit_text(code, limit)}"
                          + (f": {err_lines[-1].strip()}" if err_lines else ""))
    try:
        policy = Policy.from_dict(found)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProbeFailed(f"the probe process answered an unreadable policy ({e!r})") from e
    for line in err_lines:  # a note of the child's (e.g. an int4 kernel it could not time)
        print(line, file=sys.stderr)
    # the parent's view of the machine: same CPU, threads and environment as the child's
    return Policy(policy.paths, policy.timings, probe.machine())


def _exit_text(code: int | None, limit: float) -> str:
    if code is None:
        return f"did not exit within {limit:g} s of closing its output"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code} before reporting a policy"
