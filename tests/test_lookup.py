"""draft="lookup": continuations of the context's own n-grams drafted with no draft model,
verified exactly (greedy token for token, sampled in distribution); the n-gram proposer on
hand-made id lists; the cost model's choice; the CLI; bad input."""
import json

import pytest

import specdec
from helpers.models import make_tiny_model
from helpers.distribution import exact_two_token_distribution, pvalue, pvalue_against, sample_two_tokens
from helpers.lookup_models import REPEATING, sharp_pair
from offload.pack import pack
from specdec.lookup import NgramIndex, best_nodes
from specdec.speculate.lookup import LookupPolicy
from helpers.cli import run_cli

# -- the n-gram proposer ------------------------------------------------------------------------
def test_longest_suffix_wins_and_counts_say_how_many_occurrences_agree():
    index = NgramIndex(max_order=3)
    # "1 2" occurs twice before the end, then "x 1 2" once: order 3 ("4 1 2") matches once.
    found = index.propose([1, 2, 3, 9, 1, 2, 5, 6, 4, 1, 2, 7, 8, 4, 1, 2], length=2)
    assert found.order == 3 and found.matches == 1
    assert found.tokens == [7, 8] and found.parents == [-1, 0] and found.counts == [1, 1]


def test_occurrences_that_continue_differently_branch_most_recent_first():
    index = NgramIndex(max_order=2)
    found = index.propose([1, 2, 3, 4, 1, 2, 5, 6, 1, 2, 5, 7, 1, 2], length=2)
    assert found.order == 2 and found.matches == 3
    # Most recent first: "5 7", then "5 6" (shares the 5), then "3 4".
    assert [found.path(i) for i in range(len(found))] == [[5], [5, 7], [5, 6], [3], [3, 4]]
    assert found.counts == [2, 1, 1, 1, 1]
    # Best first by agreement; ties go to the more recent occurrence; parents come first.
    assert best_nodes(found, 3) == [0, 1, 2]
    assert best_nodes(found, 10) == [0, 1, 2, 3, 4]
    assert best_nodes(found, 0) == []


def test_no_match_no_candidates_and_min_order_is_kept():
    assert len(NgramIndex().propose([1, 2, 3, 4], length=4)) == 0
    # "3" repeats, but a 2-token match is asked for at least.
    assert len(NgramIndex(min_order=2).propose([3, 9, 8, 3], length=4)) == 0
    assert NgramIndex(min_order=1).propose([3, 9, 8, 3], length=4).tokens == [9, 8, 3]


def test_continuations_stop_at_the_context_end_and_the_index_follows_edits():
    index = NgramIndex(max_order=2)
    # A period-2 text: the match "1 2" ending 2 before the end continues with the suffix.
    assert index.propose([1, 2, 1, 2], length=5).tokens == [1, 2]
    assert index.propose([1, 2, 1, 2, 1], length=5).tokens == [2, 1]  # grown: indexed tail only
    # A different context (a new conversation) is indexed afresh: nothing of the old remains.
    assert len(index.propose([7, 8, 9], length=5)) == 0
    assert index.tokens == [7, 8, 9]


def test_recent_occurrences_only():
    context = [1, 5] * 20 + [1, 6, 1]
    found = NgramIndex(max_order=1, max_occurrences=4).propose(context, length=1)
    assert found.matches == 4 and found.tokens == [6, 5] and found.counts == [1, 3]


@pytest.mark.parametrize("bad", [dict(max_order=0), dict(min_order=3, max_order=2),
                                 dict(max_occurrences=True), dict(max_order=2.5)])
def test_bad_index_settings_are_clear_errors(bad):
    with pytest.raises(ValueError, match="lookup"):
        NgramIndex(**bad)


def test_bad_length_is_a_clear_error():
    with pytest.raises(ValueError, match="lookup length must be an integer >= 0"):
        NgramIndex().propose([1, 2], length=-1)


# -- the cost model ------------------------------------------------------------------------------
def test_policy_offers_long_runs_where_lookups_hit_and_none_where_they_miss():
    policy = LookupPolicy(k_max=16)
    for _ in range(30):  # order 4: all 8 offered taken; a pass costs 10 ms + 1 ms per token
        policy.observe(4, offered=8, accepted=8, rejected=False, tokens=9, seconds=0.019)
        policy.observe(1, offered=2, accepted=0, rejected=True, tokens=3, seconds=0.013)
    assert policy.acceptance(4) > 0.95 and policy.acceptance(1) < 0.1
    assert policy.size(4) >= 8
    sizes = [policy.size(1) for _ in range(16)]
    assert sizes.count(0) >= 14 and 1 in sizes  # plain passes, with a recheck now and then


def test_fixed_size_and_bad_k():
    assert LookupPolicy(k=3).size(1) == 3
    with pytest.raises(ValueError, match=r"k \(lookup tokens per pass\) must be an integer >= 0"):
        LookupPolicy(k=-1)


# -- exactness through load() --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("lookup") / "t"
    make_tiny_model(path, "llama", eos_token_id=None)
    return path


@pytest.mark.parametrize("k", [None, 1, 5])
def test_greedy_equals_plain_decoding_and_lookups_are_taken(tiny, k):
    expected = specdec.load(tiny, dtype="float32").generate(REPEATING, max_new_tokens=40)
    lm = specdec.load(tiny, draft="lookup", dtype="float32", k=k)
    assert lm.draft is None and lm.engine.strategy.name == "lookup"
    out = lm.generate(REPEATING, max_new_tokens=40)
    assert out.token_ids == expected.token_ids
    if k is not None:  # a fixed size: the same drafts on every machine
        assert out.stats.accepted > 0 and out.stats.tokens_per_pass > 1.2
    # A second prompt that extends the first (a chat's next turn) reuses index and caches.
    longer = REPEATING + expected.token_ids + REPEATING[:6]
    plain_next = specdec.load(tiny, dtype="float32").generate(longer, max_new_tokens=16)
    assert lm.generate(longer, max_new_tokens=16).token_ids == plain_next.token_ids


def test_streamed_q4_store_where_self_draft_is_refused(tiny, tmp_path):
    store = pack(tiny, tmp_path / "q4", quant="q4", progress=False)
    with specdec.load(store, ram="1GB", dtype="float32") as lm:
        expected = lm.generate(REPEATING, max_new_tokens=30).token_ids
    with specdec.load(store, draft="lookup", ram="1GB", dtype="float32", k=4,
                      cache_dir=tmp_path / "cache") as lm:
        assert lm.plan is not None and lm.plan.draft_bytes == 0
        out = lm.generate(REPEATING, max_new_tokens=30)
    assert out.token_ids == expected
    assert out.stats.accepted > 0


@pytest.mark.slow
def test_sampling_matches_the_target_distribution(tmp_path):
    from specdec.sampling import SamplingParams

    target, other, prompt = sharp_pair(tmp_path)
    sampling = dict(temperature=1.0)
    exact = exact_two_token_distribution(target, SamplingParams(**sampling), prompt=prompt)
    lm = specdec.load(target, draft="lookup", dtype="float32", k=3)
    counts, totals = sample_two_tokens(lm, 2000, prompt=prompt, **sampling)
    assert 0 < totals["accepted"] < totals["drafted"]  # lookups were both taken and refused
    assert pvalue(counts, exact) > 1e-3
    # Power check: the same test clearly rejects another model's distribution.
    other_exact = exact_two_token_distribution(other, SamplingParams(**sampling), prompt=prompt)
    assert pvalue_against(counts, other_exact) < 1e-6


def test_greedy_with_a_repetition_penalty_equals_plain(tiny):
    kw = dict(max_new_tokens=30, repetition_penalty=1.3, repetition_window=16)
    expected = specdec.load(tiny, dtype="float32").generate(REPEATING, **kw).token_ids
    out = specdec.load(tiny, draft="lookup", dtype="float32", k=4).generate(REPEATING, **kw)
    assert out.token_ids == expected


# -- bad input and front ends ------------------------------------------------------------------
def test_draft_model_settings_with_lookup_are_clear_errors(tiny):
    with pytest.raises(ValueError, match="speculation='tree' needs a draft model"):
        specdec.load(tiny, draft="lookup", speculation="tree")
    with pytest.raises(ValueError, match="tree_nodes sizes a draft model's tree.*use k"):
        specdec.load(tiny, draft="lookup", tree_nodes=8)
    with pytest.raises(ValueError, match="speculation='lookup' drafts from the context"):
        specdec.load(tiny, draft=tiny, speculation="lookup")


def test_banner_names_lookup(tiny):
    from specdec.cli.banner import banner

    text = banner(specdec.load(tiny, draft="lookup", dtype="float32"))
    assert "draft: none: prompt lookup (no draft model): 1-4-token matches" in text


@pytest.mark.slow
def test_cli_generate_with_draft_lookup_equals_plain(chat_pair):
    target, _ = chat_pair
    prompt = "one two three one two three one two"
    r = run_cli("generate", "--target", str(target), "--draft", "lookup", "--dtype", "float32",
                "--prompt", prompt, "--max-new-tokens", "8", "--temperature", "0", "--json")
    assert r.returncode == 0, r.stderr
    plain = specdec.load(target, dtype="float32")
    ids = plain.encode_chat([{"role": "user", "content": prompt}])
    expected = plain.generate(ids, max_new_tokens=8, repetition_penalty=1.1)  # generate's default
    assert json.loads(r.stdout)["token_ids"] == expected.token_ids
