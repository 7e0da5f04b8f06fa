"""Speculation strategies, one module each (see base.py for the interface the loop uses):
plain (no draft), chain (k drafts in a row) and tree (a best-first draft tree)."""
from .base import Outcome, Plan, Step, Strategy
from .chain import Chain, DraftLengthPolicy
from .plain import Plain
from .tree import Tree, TreeSettings

__all__ = ["Chain", "DraftLengthPolicy", "Outcome", "Plain", "Plan", "Step", "Strategy", "Tree",
           "TreeSettings"]
