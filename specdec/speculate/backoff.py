"""Falling back to plain decoding when drafting does not pay, and looking again now and
then: acceptance and costs move with the text and the machine, so a plain stretch must not
last for ever. One helper for every strategy and policy that can decide not to draft (the
chain's k = 0, the tree gate, prompt lookup per match length, lookup branches)."""
from __future__ import annotations


class Backoff:
    """While drafting does not pay, one pass in every `every` drafts anyway, to measure
    again; a pass where drafting pays ends the plain stretch."""

    def __init__(self, every: int = 8):
        self.every = _checked(every)
        self._plain = 0  # passes in a row that did not draft

    def draft(self, pays: bool) -> bool:
        """Call once per pass with whether drafting pays by the current estimates: whether
        this pass drafts."""
        if pays:
            self._plain = 0
            return True
        self._plain += 1
        if self._plain >= self.every:
            self._plain = 0
            return True
        return False


class BackoffPerKey:
    """One Backoff per key (e.g. per match length: each has its own hit rate)."""

    def __init__(self, every: int = 8):
        self.every = _checked(every)
        self._by_key: dict = {}

    def draft(self, key, pays: bool) -> bool:
        if key not in self._by_key:
            self._by_key[key] = Backoff(self.every)
        return self._by_key[key].draft(pays)


def _checked(every) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"recheck_every must be a positive integer, got {every!r}")
    return every
