"""Error types shared by offload's modules.

Bad input (a damaged store, a broken checkpoint, an impossible budget) has its own error
in the module that finds it (StoreError, CheckpointError, PackError, BudgetError): the
message names the file and the fix, and a CLI prints it as one line.

`InternalError` is the other kind: an invariant of this code failed (the prefetch ring
handed back the wrong layer, the reader thread vanished without an error). No input
explains it and no user action fixes it, so it must surface as a bug, with its traceback.
It derives from AssertionError, not RuntimeError or ValueError, so that handlers written
for user errors do not catch it by accident.
"""
from __future__ import annotations


class InternalError(AssertionError):
    """A bug in specdec/offload: an internal invariant does not hold. Report it."""
