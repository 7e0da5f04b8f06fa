"""The repetition penalty keeps speculation exact: with it, greedy speculative decoding equals
the processed target's greedy decoding (transformers' generate with repetition_penalty, or its
RepetitionPenaltyLogitsProcessor over the last N ids for a window), sampled output follows the
processed target's distribution (chi-square), and the draft gets the same processing (a draft
equal to the target is never rejected)."""
import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

import specdec
from helpers.models import make_noised_copy, make_tiny_model, sharpen_lm_head
from helpers.distribution import exact_two_token_distribution, pvalue, pvalue_against, sample_two_tokens
from specdec.penalty import penalize
from specdec.sampling import SamplingParams

PROMPT = [3, 17, 42, 8, 61, 5, 17, 3]
NEW = 24
MODES = [("chain", dict(k=4)), ("tree", dict(tree_nodes=12)), ("overlap", dict(tree_nodes=12))]


def _reference(logits: torch.Tensor, history: list[int], penalty: float, window: int) -> torch.Tensor:
    ids = torch.tensor([history[-window:] if window else history])
    return RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.unsqueeze(0).clone())[0]


@pytest.mark.parametrize("window", [0, 5])
def test_penalize_matches_transformers_processor_per_row(window):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen) * 3
    context = [1, 2, 3, 2, 40, 7, 8]
    extras = [[], [9], [9, 1], [9, 1, 33]]
    params = SamplingParams(repetition_penalty=1.7, repetition_window=window)
    out = penalize(logits, params, context, extras)
    for row, extra in enumerate(extras):
        expected = _reference(logits[row], context + extra, 1.7, window)
        torch.testing.assert_close(out[row], expected)
    assert not torch.equal(out, logits)
    # One-dimensional logits, no extras, and an off penalty (the same tensor back).
    torch.testing.assert_close(penalize(logits[0], params, context), _reference(logits[0], context, 1.7, window))
    assert penalize(logits, SamplingParams(), context) is logits


def test_penalty_settings_are_checked():
    for bad in (dict(repetition_penalty=0), dict(repetition_penalty=-1.0),
                dict(repetition_penalty=float("nan")), dict(repetition_penalty=float("inf")),
                dict(repetition_window=-1), dict(repetition_window=2.5), dict(repetition_penalty=True)):
        with pytest.raises(ValueError, match="repetition_"):
            SamplingParams(**bad)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("penalty")
    target, draft = root / "t", root / "d"
    make_tiny_model(target, "llama", eos_token_id=None)
    sharpen_lm_head(target, 8.0)
    make_noised_copy(target, draft, scale=0.3)
    return target, draft


def _hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")


def _hf_greedy(path, penalty: float, window: int) -> list[int]:
    """The processed target's greedy tokens: transformers' generate for the whole context;
    for a window, its own processor over the last `window` ids at each step."""
    hf = _hf_model(path)
    with torch.no_grad():
        if not window:
            out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=NEW, min_new_tokens=NEW,
                              do_sample=False, repetition_penalty=penalty, pad_token_id=0)
            return out[0, len(PROMPT):].tolist()
        ids = list(PROMPT)
        for _ in range(NEW):
            logits = hf(torch.tensor([ids])).logits[0, -1]
            ids.append(int(_reference(logits, ids, penalty, window).argmax()))
        return ids[len(PROMPT):]


@pytest.mark.parametrize("window", [0, 6])
def test_greedy_with_penalty_equals_the_processed_target(pair, window):
    target, draft = pair
    expected = _hf_greedy(target, 1.5, window)
    sampling = dict(repetition_penalty=1.5, repetition_window=window)
    plain = specdec.load(target, dtype="float32")
    assert plain.generate(PROMPT, max_new_tokens=NEW, **sampling).token_ids == expected
    # The penalty changes this output: the comparisons below could fail.
    assert plain.generate(PROMPT, max_new_tokens=NEW).token_ids != expected
    for speculation, size in MODES:
        lm = specdec.load(target, draft=draft, dtype="float32", speculation=speculation, **size)
        out = lm.generate(PROMPT, max_new_tokens=NEW, **sampling)
        assert out.token_ids == expected, speculation
        assert out.stats.accepted > 0, speculation
        assert out.stats.target_passes < NEW, speculation


@pytest.mark.parametrize("speculation,size", MODES)
def test_a_draft_equal_to_the_target_is_processed_the_same(pair, speculation, size):
    # Had the draft proposed from unpenalized logits (or with another history), the
    # penalised target would reject some of its proposals.
    target, _ = pair
    lm = specdec.load(target, draft=target, dtype="float32", speculation=speculation, **size)
    out = lm.generate(PROMPT, max_new_tokens=NEW, repetition_penalty=1.5, repetition_window=6)
    assert out.stats.rejected == 0 and out.stats.accepted > 0
    assert out.token_ids == specdec.load(target, dtype="float32").generate(
        PROMPT, max_new_tokens=NEW, repetition_penalty=1.5, repetition_window=6).token_ids


def test_sampled_chain_with_a_draft_equal_to_the_target_never_rejects(pair):
    # Rejection sampling accepts with probability min(1, p/q): a draft equal to the target
    # is refused only where its processed row q differs from the target's p, i.e. where the
    # draft saw another history or no penalty.
    target, _ = pair
    lm = specdec.load(target, draft=target, dtype="float32", k=3)
    sampling = dict(temperature=1.0, repetition_penalty=3.0, repetition_window=6)
    for seed in range(5):
        out = lm.generate(PROMPT, max_new_tokens=NEW, seed=seed, **sampling)
        assert out.stats.rejected == 0 and out.stats.accepted > NEW // 2, seed


# One end-to-end run (tree: the rows of a tree each carry their own history); the chain's
# rows are checked above, and the acceptance rules in test_acceptance_distribution.py.
@pytest.mark.slow
def test_sampling_with_penalty_follows_the_processed_target(tmp_path, speculation="tree"):
    target, draft = tmp_path / "t", tmp_path / "d"
    make_tiny_model(target, "llama", vocab_size=16, eos_token_id=None)
    sharpen_lm_head(target, 40.0)
    make_noised_copy(target, draft, scale=0.5)
    sampling = dict(temperature=1.0, repetition_penalty=3.0, repetition_window=0)
    # The reference: transformers' processor over the whole history, ahead of the temperature.
    exact = exact_two_token_distribution(target, SamplingParams(**sampling),
                                         process=lambda logits, ids: _reference(logits, ids, 3.0, 0))
    unprocessed = exact_two_token_distribution(target, SamplingParams(temperature=1.0))
    lm = specdec.load(target, draft=draft, dtype="float32", k=3, speculation=speculation, tree_nodes=6)
    counts, totals = sample_two_tokens(lm, 2000, **sampling)
    assert 0 < totals["accepted"] < totals["drafted"]
    assert pvalue(counts, exact) > 1e-3
    # Power check: the same samples clearly reject the target without the penalty.
    assert pvalue_against(counts, unprocessed) < 1e-6
