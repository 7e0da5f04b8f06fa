"""Incremental detokenisation and stop strings.

Decoding the whole reply each time and emitting the new suffix is correct across
tokens that split a multi-byte character: while the tail decodes to U+FFFD we hold
it back until the next token completes it.
"""
from __future__ import annotations


class TextAssembler:
    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out
        self.stopped = False

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, ids: list[int]) -> str:
        """Add tokens; return the new text that is safe to show (may be empty)."""
        self.ids.extend(ids)
        text = self.text()
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            text = text[:cut]
        elif text.endswith("\ufffd"):
            text = text[:-1]  # an incomplete character: wait for the next token
        delta = text[self.emitted:]
        self.emitted = max(self.emitted, len(text))
        return delta

    def _stop_at(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None
