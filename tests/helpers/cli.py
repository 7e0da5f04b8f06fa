"""Running the `specdec` command line from tests: in this process (argument errors, --help,
anything that needs no real process: no interpreter start, no second torch import) or as a
real child process (signals, pipes, the console script, exit status seen by a shell)."""
from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args, stdin="", env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    """`python -m specdec.cli ARGS` in a child process, text in and out."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "specdec.cli", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, env=env)


def cli_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """specdec.cli.main(ARGS) here, with what it printed (pytest's `capsys`) and its exit
    status, whether returned or raised by argparse (usage errors, --help) as SystemExit."""
    from specdec.cli import main

    capsys.readouterr()  # only this call's output
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["specdec", *map(str, args)], code, out, err)
