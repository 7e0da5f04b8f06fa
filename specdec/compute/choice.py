"""Which kernel policy a load gets: `kernels="auto"` (the default, or $SPECDEC_KERNELS) is the
probed policy for this machine, `"reference"` is F.linear everywhere (what transformers
computes). The returned Policy is given to the models at build time."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .kernels import REFERENCE, Policy
from .probe import machine
from .probe_cache import load_or_probe

KERNEL_CHOICES = ("auto", "reference")
KERNELS_ENV = "SPECDEC_KERNELS"
# Probe results of this process, by machine fingerprint (the thread count is part of it): a
# second load reads neither the cache nor, after a failed probe, tries (and warns) again.
_measured: dict[str, Policy] = {}


def kernel_policy(kernels: str | None, cache_dir: Path | None, progress: bool = True) -> Policy:
    """The policy for `kernels` ("auto", "reference", or None: $SPECDEC_KERNELS, else auto);
    `cache_dir`: the cache root holding the probe's per-machine cache."""
    choice = kernels or os.environ.get(KERNELS_ENV) or "auto"
    if choice not in KERNEL_CHOICES:
        where = "kernels" if kernels else f"${KERNELS_ENV}"
        raise ValueError(f"{where}={choice!r}: use one of {', '.join(KERNEL_CHOICES)} ('auto' times "
                         "this CPU's matmul paths once and uses the fastest; 'reference' is F.linear)")
    if choice == "reference":
        return REFERENCE
    key = json.dumps(machine(), sort_keys=True)
    if key not in _measured:
        _measured[key] = load_or_probe(cache_dir, progress=progress)
    return _measured[key]
