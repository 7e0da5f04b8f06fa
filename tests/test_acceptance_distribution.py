"""The acceptance rules are exact, checked on the pure functions (verify.py) against known
distributions: a small "language" whose next-token probabilities depend on the whole context
(a target P and a different draft Q), decoded by a few lines of loop around accept_sampled
(chain) or accept_tree (tree, overlap, lookup: any tree the target walks). The first three
emitted tokens must follow P's exact joint law (chi-square), and clearly not Q's (power).
Thousands of decodes take seconds here, against minutes through a model; the end-to-end runs
(one per mode) live beside each mode's tests and are marked slow."""
import bisect
import functools
import itertools
import random

import pytest
import torch

from helpers.distribution import pvalue, pvalue_against
from specdec.sampling import SamplingParams, probs_from_logits, sample
from specdec.speculate.tree_model import DraftTree
from specdec.verify import accept_sampled, accept_tree

VOCAB = 5
EMITTED = 3  # tokens whose joint law is checked: 5**3 = 125 categories
PARAMS = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.8, top_k=3, top_p=0.9)]
SAMPLES = 4000  # decodes per test: the power checks below reject the draft's law at p ~ 0
# The quick loop runs the truncated setting (top-k and top-p: zeros in p and q); temperature
# alone runs in the full suite.
SETTINGS = [pytest.param(PARAMS[0], id="t1", marks=pytest.mark.slow),
            pytest.param(PARAMS[1], id="t0.8-k3-p0.9")]


class Language:
    """Next-token logits for any context, fixed by (seed, context): deterministic, different
    for every context, so a mix-up of rows or positions changes the law."""

    def __init__(self, seed: int, scale: float):
        self.seed, self.scale, self.rows, self.processed = seed, scale, {}, {}

    def logits(self, context: tuple) -> torch.Tensor:
        if context not in self.rows:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + hash(context) % 1_000_003)
            self.rows[context] = torch.randn(VOCAB, generator=g) * self.scale
        return self.rows[context]

    def probs(self, context: tuple, params: SamplingParams) -> torch.Tensor:
        key = (context, params)
        if key not in self.processed:
            self.processed[key] = probs_from_logits(self.logits(context), params)
        return self.processed[key]

    def draw(self, context: tuple, params: SamplingParams, rng: random.Random) -> int:
        """A token drawn from probs(context): the draft's own sampling, done in Python (it is
        not what is under test, and thousands of torch calls would dominate the test)."""
        key = (context, params, "cdf")
        if key not in self.processed:
            self.processed[key] = list(itertools.accumulate(self.probs(context, params).tolist()))
        cdf = self.processed[key]
        return min(bisect.bisect_right(cdf, rng.random() * cdf[-1]), VOCAB - 1)

    def joint(self, params: SamplingParams) -> torch.Tensor:
        """Exact P(t1, t2, t3), flattened in the order `index` counts."""
        out = torch.zeros(VOCAB ** EMITTED, dtype=torch.float64)
        for tokens in itertools.product(range(VOCAB), repeat=EMITTED):
            prob = 1.0
            for i, t in enumerate(tokens):
                prob *= float(self.probs(tokens[:i], params)[t])
            out[index(tokens)] = prob
        return out


class Restricted(Language):
    """A draft that cannot propose some tokens (a draft with a partial output vocabulary):
    only rejection sampling's residual can emit them."""

    def __init__(self, seed: int, scale: float, missing: list[int]):
        super().__init__(seed, scale)
        self.missing = missing

    def probs(self, context: tuple, params: SamplingParams) -> torch.Tensor:
        key = (context, params, "restricted")
        if key not in self.processed:
            row = super().probs(context, params).clone()
            row[self.missing] = 0
            self.processed[key] = row / row.sum()
        return self.processed[key]


def index(tokens) -> int:
    return sum(t * VOCAB ** (EMITTED - 1 - i) for i, t in enumerate(tokens[:EMITTED]))


TARGET, DRAFT = Language(seed=1, scale=1.5), Language(seed=2, scale=1.5)


def chain_decode(params, k: int, gen: torch.Generator, rng: random.Random, draft=DRAFT
                 ) -> tuple[list[int], int, int]:
    """One decode as the chain mode does it: draft k tokens from Q, verify with P's rows at
    every drafted prefix, repeat until EMITTED tokens. Returns (tokens, accepted, drafted)."""
    out, accepted, drafted = [], 0, 0
    while len(out) < EMITTED:
        drafts, q = [], []
        for _ in range(k):
            q.append(draft.probs(tuple(out + drafts), params))
            drafts.append(draft.draw(tuple(out + drafts), params, rng))
        p = torch.stack([TARGET.probs(tuple(out + drafts[:i]), params) for i in range(k + 1)])
        n, nxt = accept_sampled(torch.tensor(drafts), torch.stack(q), p, gen)
        out += drafts[:n] + [nxt]
        accepted, drafted = accepted + n, drafted + k
    return out, accepted, drafted


def best_first_tree(context: list[int], params, width: int, depth: int) -> tuple[DraftTree, list]:
    """The draft's `width` most probable children under every node, `depth` levels: a tree
    chosen, not sampled (the case accept_tree's rule is for). Returns the tree and each
    node's token path from the root."""
    tree, paths, frontier = DraftTree(), [], [(-1, [])]
    for _ in range(depth):
        grown = []
        for node, path in frontier:
            probs = DRAFT.probs(tuple(context + path), params)
            for rank, t in enumerate(probs.argsort(descending=True)[:width].tolist()):
                child = tree.add(token=t, parent=node, cum_logp=0.0, rank=rank)
                paths.append(path + [t])
                grown.append((child, path + [t]))
        frontier = grown
    return tree, paths


def tree_decode(params, width: int, depth: int, gen: torch.Generator, rng=None) -> tuple[list[int], int, int]:
    out, accepted, drafted = [], 0, 0
    while len(out) < EMITTED:
        tree, logits = tree_pass(tuple(out), params, width, depth)
        path, nxt = accept_tree(tree, logits, params, gen)
        out += [tree.tokens[node] for node in path] + [nxt]
        accepted, drafted = accepted + len(path), drafted + len(tree)
    return out, accepted, drafted


@functools.cache
def tree_pass(context: tuple, params, width: int, depth: int) -> tuple[DraftTree, torch.Tensor]:
    """The tree drafted after `context` and the target's logits for its root and every node
    (what one verification pass computes); the same context always gives the same tree."""
    tree, paths = best_first_tree(list(context), params, width, depth)
    rows = [TARGET.logits(context)] + [TARGET.logits(context + tuple(p)) for p in paths]
    return tree, torch.stack(rows)


def counts_of(decode, n: int, **kwargs) -> tuple[torch.Tensor, int, int]:
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    counts = torch.zeros(VOCAB ** EMITTED, dtype=torch.float64)
    accepted = drafted = 0
    for _ in range(n):
        tokens, a, d = decode(gen=gen, rng=rng, **kwargs)
        counts[index(tokens)] += 1
        accepted, drafted = accepted + a, drafted + d
    return counts, accepted, drafted


@pytest.mark.parametrize("params", SETTINGS)
@pytest.mark.parametrize("k", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_chain_acceptance_follows_the_target_law(params, k):
    counts, accepted, drafted = counts_of(chain_decode, SAMPLES, params=params, k=k)
    assert 0 < accepted < drafted  # drafts were both taken and refused
    assert pvalue(counts, TARGET.joint(params)) > 1e-3
    assert pvalue_against(counts, DRAFT.joint(params)) < 1e-6


def test_chain_acceptance_with_a_draft_missing_the_likeliest_tokens():
    params = PARAMS[0]
    first = TARGET.probs((), params)
    missing = first.topk(2).indices.tolist()
    draft = Restricted(seed=2, scale=1.5, missing=missing)
    counts, accepted, _ = counts_of(chain_decode, SAMPLES, params=params, k=3, draft=draft)
    assert accepted > 0
    first_tokens = counts.view(VOCAB, -1).sum(1)
    assert first_tokens[missing].sum() > 0.2 * counts.sum()  # the residual emitted them
    assert pvalue(counts, TARGET.joint(params)) > 1e-3


@pytest.mark.parametrize("params", SETTINGS)
@pytest.mark.parametrize("width,depth", [pytest.param(1, 3, marks=pytest.mark.slow), (2, 2)])
def test_tree_acceptance_follows_the_target_law(params, width, depth):
    counts, accepted, drafted = counts_of(tree_decode, SAMPLES, params=params, width=width, depth=depth)
    assert 0 < accepted < drafted
    assert pvalue(counts, TARGET.joint(params)) > 1e-3
    assert pvalue_against(counts, DRAFT.joint(params)) < 1e-6


def test_the_check_fails_a_biased_acceptance_rule():
    """The test's power against a plausible bug: accepting a draft token whenever the target
    gives it any mass (no min(1, p/q) coin) follows neither law."""
    def biased_decode(params, gen, rng):
        out = []
        while len(out) < EMITTED:
            x = DRAFT.draw(tuple(out), params, rng)
            p = TARGET.probs(tuple(out), params)
            out.append(x if p[x] > 0 else int(sample(p, gen)))
        return out, 0, 0

    params = PARAMS[0]
    counts, _, _ = counts_of(biased_decode, SAMPLES, params=params)
    assert pvalue_against(counts, TARGET.joint(params)) < 1e-6
