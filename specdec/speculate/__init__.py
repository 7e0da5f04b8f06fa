"""Speculation strategies, one module each (see base.py for the interface the loop uses):
plain (no draft), chain (k drafts in a row), tree (a best-first draft tree), overlap (a
tree that outlives the pass and grows while the target streams) and lookup (no draft model:
continuations of the context's own n-grams). registry.py names them and builds one from
the speculation settings."""
from .base import Outcome, Plan, Step, Strategy
from .chain import Chain, DraftLengthPolicy
from .lookup import Lookup
from .lookup_policy import LookupPolicy
from .overlap import Overlap
from .plain import Plain
from .registry import MODES, Inputs, Mode, Speculation, build_strategy
from .tree import Tree, TreeSettings

__all__ = ["Chain", "DraftLengthPolicy", "Inputs", "Lookup", "LookupPolicy", "MODES", "Mode", "Outcome",
           "Overlap", "Plain", "Plan", "Speculation", "Step", "Strategy", "Tree", "TreeSettings",
           "build_strategy"]
