"""Prompts no training data may contain: the independent evaluation set (both halves,
tools/draft/eval_prompts_independent.toml) and the demo's 20 evaluation prompts. A user turn
is refused if, after normalising (case, punctuation, spacing), it equals one of them or shares
a run of SHINGLE words with one (a shorter held-out prompt: contains all its words in a row):
generated text that merely brushes one is dropped too, so a held-out prompt can never reach
training inside a longer message or through a paraphrase that keeps its wording."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from .files import eval_prompts

INDEPENDENT_TOML = Path(__file__).with_name("eval_prompts_independent.toml")
SHINGLE = 6


def independent_prompts(half: str | None = None) -> list[str]:
    """The hand-written set: half "open", "hidden", or None for both (open first)."""
    data = tomllib.loads(INDEPENDENT_TOML.read_text(encoding="utf-8"))
    if half is None:
        return list(data["open"]) + list(data["hidden"])
    if half not in ("open", "hidden"):
        raise ValueError(f"half {half!r}: use 'open', 'hidden' or None (both)")
    return list(data[half])


def normalise(text: str) -> list[str]:
    """Lower-case words with apostrophes dropped and other punctuation as spaces."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower().replace("'", "").replace("\u2019", "")).split()


def _shingles(words: list[str], n: int = SHINGLE) -> set[tuple[str, ...]]:
    """Every run of n words (the whole text if it is shorter)."""
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class HeldOut:
    """Answers whether a text may go into training data."""

    def __init__(self, prompts: list[str] | None = None):
        self.prompts = prompts if prompts is not None else independent_prompts() + eval_prompts()
        self._whole = {" ".join(normalise(p)) for p in self.prompts}
        self._shingles = set().union(*(_shingles(normalise(p)) for p in self.prompts))
        self._short_lengths = {len(normalise(p)) for p in self.prompts} - set(range(SHINGLE, 10**6))

    def refuses(self, text: str) -> bool:
        words = normalise(text)
        if " ".join(words) in self._whole:
            return True
        runs = set().union(_shingles(words), *(_shingles(words, n) for n in self._short_lengths))
        return any(s in self._shingles for s in runs)
