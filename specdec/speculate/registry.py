"""Speculation modes by name: what each needs and how it is built from the settings.

The loop takes any Strategy (base.py); this table is the one place that turns a mode's name
and its settings into one. A mode that drafts with a model gets a Drafter (the draft model
with its own cache); a model-free mode (lookup) drafts from the context alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..draft import Drafter
from .base import Strategy
from .chain import Chain, DraftLengthPolicy
from .lookup import Lookup
from .lookup_policy import LookupPolicy
from .overlap import Overlap
from .plain import Plain
from .tree import Tree, TreeSettings

DEFAULT_LOOKUP_BRANCHES = 8  # nodes, on an adaptive tree: sized per pass by their measured worth


@dataclass(frozen=True)
class Speculation:
    """The speculation settings, resolved (LoadSettings.resolve fills the defaults that
    depend on the draft): the mode's name and its sizes."""
    mode: str = "chain"
    k: int | None = None  # chain / lookup: drafted tokens per pass (None: adaptive)
    tree_nodes: int | None = None  # tree / overlap: fixed tree size (None: the cost model's)
    tree_width: int = 4  # tree / overlap: children offered per node
    lookup_branches: int = 0  # tree: prompt-lookup nodes grafted onto each tree

    def tree(self) -> TreeSettings:
        if self.tree_nodes is None:
            return TreeSettings(width=self.tree_width, lookup=self.lookup_branches)
        return TreeSettings(max_nodes=self.tree_nodes, width=self.tree_width, fixed=True,
                            lookup=self.lookup_branches)


@dataclass(frozen=True)
class Inputs:
    """What a mode's builder gets: the settings, the drafter (None for a model-free mode),
    the target's pass-time curve from the kernel probe (None: measured as it runs) and its
    weight source's stream stats (None in RAM)."""
    speculation: Speculation
    drafter: Drafter | None
    profile: object = None
    source_stats: object = None


@dataclass(frozen=True)
class Mode:
    build: Callable[[Inputs], Strategy]
    needs_model: bool  # drafts with a draft model (a Drafter), or from the context alone


def _chain(i: Inputs) -> Strategy:
    return Chain(i.drafter, DraftLengthPolicy(i.speculation.k, profile=i.profile))


def _tree(i: Inputs) -> Strategy:
    return Tree(i.drafter, i.speculation.tree(), profile=i.profile)


def _overlap(i: Inputs) -> Strategy:
    return Overlap(i.drafter, i.speculation.tree(), source_stats=i.source_stats, profile=i.profile)


def _lookup(i: Inputs) -> Strategy:
    return Lookup(LookupPolicy(i.speculation.k, profile=i.profile))


MODES: dict[str, Mode] = {
    "chain": Mode(_chain, needs_model=True),  # k drafts in a row, rejection sampling
    "tree": Mode(_tree, needs_model=True),  # a best-first draft tree verified in one pass
    "overlap": Mode(_overlap, needs_model=True),  # a tree that grows while the target streams
    "lookup": Mode(_lookup, needs_model=False),  # the context's own n-gram continuations
}


def check_mode(name) -> Mode:
    if name not in MODES:
        raise ValueError(f"speculation must be one of {tuple(MODES)}, got {name!r}")
    return MODES[name]


def build_strategy(inputs: Inputs) -> Strategy:
    """The strategy for `inputs`; plain decoding when a model-drafting mode has no drafter."""
    mode = check_mode(inputs.speculation.mode)
    if mode.needs_model and inputs.drafter is None:
        return Plain()
    return mode.build(inputs)
