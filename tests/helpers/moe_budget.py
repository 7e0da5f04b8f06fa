"""The smallest RAM budget specdec accepts for a store, read from the refusal of a smaller one
(what the MoE tests stream their tiny stores under)."""
import re

import pytest


def minimum_ram(store, **load) -> int:
    """`load`: more of specdec.load's settings (a draft takes RAM too)."""
    import specdec
    from offload.budget import DEFAULT_OVERHEAD, BudgetError

    with pytest.raises(BudgetError) as e:
        specdec.load(store, dtype="float32", ram=DEFAULT_OVERHEAD, max_context=64, **load)
    return int(float(re.search(r"at least ([0-9.]+) MB", str(e.value)).group(1)) * 1e6)
