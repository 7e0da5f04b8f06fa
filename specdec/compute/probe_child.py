"""The probe child's entry point: `python -m specdec.compute.probe_child --threads N --shape RxC`.

Writes one JSON object per line on stdout: {"done": i, "of": n} before the first bucket and
after each, then {"policy": Policy.as_dict()}. probe_process.py starts it as a plain
subprocess with an entry point of its own, so the caller's main module is never imported again
(multiprocessing's spawn re-runs it: a script without a main guard, or one read from stdin,
would start children forever).
"""
from __future__ import annotations

import argparse
import json
import sys


def _shape(text: str) -> tuple[int, int]:
    rows, _, cols = text.partition("x")
    return int(rows), int(cols)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m specdec.compute.probe_child")
    p.add_argument("--threads", type=int, required=True, help="torch threads (the parent's)")
    p.add_argument("--shape", type=_shape, required=True, help="probe weight shape, ROWSxCOLS")
    args = p.parse_args(argv)

    import torch

    from .probe import probe

    torch.set_num_threads(args.threads)

    def report(done: int, total: int) -> None:
        print(json.dumps({"done": done, "of": total}), flush=True)

    policy = probe(shape=args.shape, progress=report)
    print(json.dumps({"policy": policy.as_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
