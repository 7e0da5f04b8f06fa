"""Inputs for the prompt-lookup tests (plain lookup and lookup branches): a prompt that repeats
itself, and a sharpened target with an unrelated model and a prompt where a lookup's guess is
taken about half the time."""
from __future__ import annotations

import torch

from helpers.distribution import VOCAB16
from helpers.models import make_tiny_model, sharpen_lm_head

# Repeats itself: its suffix "9 10 11 12" occurred twice before, so lookups fire at once.
REPEATING = [5, 6, 7, 8, 9, 10, 11, 12] * 3


def lookup_prompt(path) -> list[int]:
    """base + [t] + base on the 16-token vocabulary, with t the token the lookup will propose
    after it, chosen so that the target takes t about half the time: both outcomes of the
    acceptance test then happen often."""
    import specdec
    from specdec.sampling import SamplingParams, probs_from_logits

    model = specdec.load(path, dtype="float32").target.model
    base = [3, 7, 1, 12, 5]
    best, best_gap = None, 2.0
    for t in range(VOCAB16):
        prompt = base + [t] + base
        cache = model.new_cache(32)
        logits = model.forward(torch.tensor(prompt), cache.next_positions(len(prompt)), cache)[-1]
        p = float(probs_from_logits(logits, SamplingParams(temperature=1.0))[t])
        if abs(p - 0.5) < best_gap:
            best, best_gap = prompt, abs(p - 0.5)
    return best


def sharp_pair(root) -> tuple:
    """Two unrelated sharpened models on the 16-token vocabulary (a target, and another one:
    a draft, or the wrong distribution for the power check), and a prompt for lookups."""
    target, other = root / "t", root / "o"
    for path, seed in ((target, 0), (other, 1)):
        make_tiny_model(path, "llama", vocab_size=16, eos_token_id=None, seed=seed)
        sharpen_lm_head(path, 40.0)
    return target, other, lookup_prompt(target)
