"""Prompt-lookup branches grafted onto a draft model's tree: grafting on hand-made trees
(shared nodes, room, ranks), the sizing and its re-check, the measured hit rates, exactness
through load() (greedy token for token, sampled in distribution), settings and bad input."""
import math

import pytest

import specdec
from helpers.models import make_tiny_model
from helpers.distribution import exact_two_token_distribution, pvalue, pvalue_against, sample_two_tokens
from helpers.lookup_models import REPEATING, sharp_pair
from specdec.sampling import SamplingParams
from specdec.speculate.lookup_branches import LOOKUP_RANK, LookupBranches
from specdec.speculate.tree_model import DraftTree, TreeCostModel

# "1 2 3 4" occurred twice before, followed by "5 6 7 0 ..." and (most recently) "5 6 9 0 ...":
# the lookup's trie is 5 -> 6 -> {9 -> 0 -> 1 ..., 7 -> 0 ...}; after the shared 5 and 6, its
# best nodes follow the most recent occurrence.
CONTEXT = [1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 9, 0, 1, 2, 3, 4]


def drafted_tree() -> DraftTree:
    t = DraftTree()  # the draft proposed 5 (rank 0) and 8 (rank 1) after the context
    t.add(5, parent=-1, rank=0, cum_logp=math.log(0.6))
    t.add(8, parent=-1, rank=1, cum_logp=math.log(0.2))
    return t


def flat(new_nodes, extra_tokens):  # a pass whose cost does not grow: every guess pays
    return 1.0 + extra_tokens


def test_graft_shares_the_drafts_nodes_and_adds_the_rest():
    tree = drafted_tree()
    graft = LookupBranches(max_nodes=5).graft(tree, CONTEXT, room=16, rate=flat)
    assert graft.order == 4 and graft.added == 4
    assert graft.nodes[0] == 0  # the draft's own "5" is shared, not added twice
    assert tree.tokens[2:] == [6, 9, 0, 1] and tree.parents[2:] == [0, 2, 3, 4]
    assert tree.ranks[2:] == [LOOKUP_RANK] * 4 and tree.depths[2:] == [2, 3, 4, 5]
    assert graft.nodes == [0, 2, 3, 4, 5]


def test_graft_keeps_to_the_room_and_fixed_grafts_what_fits():
    tree = drafted_tree()
    graft = LookupBranches(max_nodes=8, fixed=True).graft(tree, CONTEXT, room=4, rate=None)
    assert graft.added == 1 and tree.tokens[2:] == [6]  # 4 nodes in all: 2 deep at most
    assert LookupBranches(max_nodes=8).graft(drafted_tree(), CONTEXT, room=2, rate=flat).nodes == []
    assert LookupBranches(max_nodes=0).graft(drafted_tree(), CONTEXT, room=16, rate=flat).nodes == []
    nothing = DraftTree()
    assert LookupBranches().graft(nothing, [1, 2, 3], room=16, rate=flat).nodes == []  # no match


def test_costly_passes_graft_nothing_then_recheck_with_one_node():
    def steep(new_nodes, extra_tokens):  # each verified node costs far more than it can bring
        return (1.0 + extra_tokens) / (1.0 + 10.0 * new_nodes)

    branches = LookupBranches(max_nodes=8, recheck_every=3)
    sizes = [branches.graft(DraftTree(), CONTEXT, 16, steep).added for _ in range(6)]
    assert sizes == [0, 0, 1, 0, 0, 1]


def test_hit_rates_are_measured_per_match_length():
    branches = LookupBranches(max_nodes=5)
    prior = branches.policy.acceptance(4)
    tree = drafted_tree()
    graft = branches.graft(tree, CONTEXT, 16, flat)  # 5 (shared), 6, 9, 0, 1
    assert graft.taken(tree, [0, 2, 3, 4, 5]) == (5, False)  # took them all: ran past the offer
    assert graft.taken(tree, [1]) == (0, True)  # took the draft's 8: refused the lookup's 5
    assert graft.taken(tree, [0, 2]) == (2, True)  # stopped after 6: refused 9
    for _ in range(5):
        branches.observe(graft, tree, [0, 2, 3, 4, 5])
    assert branches.policy.acceptance(4) > prior
    assert branches.policy.acceptance(2) == prior  # another match length: not measured yet
    for _ in range(30):  # forgetting: what is measured now outweighs the early hits
        branches.observe(graft, tree, [1])
    assert branches.policy.acceptance(4) < prior


def test_the_trees_rank_rates_ignore_lookup_nodes():
    cost = TreeCostModel(width=2)
    tree = drafted_tree()
    LookupBranches(max_nodes=8).graft(tree, CONTEXT, 16, flat)
    cost.observe_walk(tree, [0, 2], 9)  # the target took 5, 6 (a lookup node), then 9
    assert cost.visits == [1.0, 1.0] and cost.hits == [1.0, 0.0]  # the root's two draft nodes


# -- exactness through load() -----------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("branches")
    make_tiny_model(root / "t", "llama", eos_token_id=None)
    make_tiny_model(root / "d", "llama", eos_token_id=None, seed=1)  # a draft that guesses badly
    return root / "t", root / "d"


@pytest.mark.parametrize("lookup", [None, 6])
def test_greedy_equals_plain_and_lookup_nodes_are_taken(pair, lookup):
    target, draft = pair
    expected = specdec.load(target, dtype="float32").generate(REPEATING, max_new_tokens=40)
    lm = specdec.load(target, draft=draft, dtype="float32", speculation="tree",
                      tree_nodes=None if lookup is None else 3, lookup_branches=lookup)
    out = lm.generate(REPEATING, max_new_tokens=40)
    assert out.token_ids == expected.token_ids
    if lookup is not None:  # a fixed tree and fixed branches: the same drafts on every machine
        assert out.stats.counters["lookup_taken"] > 0
        assert out.stats.tokens_per_pass > 1.5
    longer = REPEATING + expected.token_ids + REPEATING[:6]  # the next turn of a chat
    plain_next = specdec.load(target, dtype="float32").generate(longer, max_new_tokens=16)
    assert lm.generate(longer, max_new_tokens=16).token_ids == plain_next.token_ids


def test_greedy_with_a_repetition_penalty_equals_plain(pair):
    target, draft = pair
    kw = dict(max_new_tokens=30, repetition_penalty=1.3, repetition_window=16)
    expected = specdec.load(target, dtype="float32").generate(REPEATING, **kw).token_ids
    lm = specdec.load(target, draft=draft, dtype="float32", speculation="tree", tree_nodes=2,
                      lookup_branches=5)
    assert lm.generate(REPEATING, **kw).token_ids == expected


@pytest.mark.slow
def test_sampling_matches_the_target_distribution(tmp_path):
    target, draft, prompt = sharp_pair(tmp_path)
    exact = exact_two_token_distribution(target, SamplingParams(temperature=1.0), prompt=prompt)
    lm = specdec.load(target, draft=draft, dtype="float32", speculation="tree", tree_nodes=1,
                      lookup_branches=3)
    # 3 new tokens: room for the draft's node and a lookup node in the first pass
    counts, totals = sample_two_tokens(lm, 2000, max_new_tokens=3, prompt=prompt, temperature=1.0)
    assert 0 < totals["lookup_taken"] < totals["lookup_nodes"]  # taken and refused
    assert pvalue(counts, exact) > 1e-3
    other_exact = exact_two_token_distribution(draft, SamplingParams(temperature=1.0), prompt=prompt)
    assert pvalue_against(counts, other_exact) < 1e-6


# -- settings and bad input ---------------------------------------------------------------------
def test_defaults_on_an_adaptive_tree_only_and_clear_errors(pair):
    from specdec.cli.banner import banner

    target, draft = pair
    adaptive = specdec.load(target, draft=draft, dtype="float32", speculation="tree")
    assert adaptive.engine.strategy.lookup.max_nodes == 8
    assert "lookup branches <= 8 (cost model)" in banner(adaptive)
    fixed = specdec.load(target, draft=draft, dtype="float32", speculation="tree", tree_nodes=4)
    assert fixed.engine.strategy.lookup is None
    off = specdec.load(target, draft=draft, dtype="float32", speculation="tree", lookup_branches=0)
    assert off.engine.strategy.lookup is None
    with pytest.raises(ValueError, match="lookup_branches adds prompt-lookup nodes to a draft tree, "
                                         "but speculation='chain'"):
        specdec.load(target, draft=draft, lookup_branches=4)
    with pytest.raises(ValueError, match="lookup_branches must be an integer >= 0"):
        specdec.load(target, draft=draft, speculation="tree", lookup_branches=-1)
    with pytest.raises(ValueError, match="speculation='lookup'"):
        specdec.load(target, draft="lookup", lookup_branches=4)


@pytest.mark.slow
def test_cli_flag_equals_plain_and_bad_values_are_clear(chat_pair):
    import json

    from helpers.cli import run_cli

    target, draft = chat_pair
    prompt = "one two three one two three one two"
    common = ["generate", "--target", str(target), "--draft", str(draft), "--dtype", "float32",
              "--prompt", prompt, "--max-new-tokens", "8", "--temperature", "0"]
    r = run_cli(*common, "--speculation", "tree", "--tree-nodes", "2", "--lookup-branches", "4", "--json")
    assert r.returncode == 0, r.stderr
    plain = specdec.load(target, dtype="float32")
    ids = plain.encode_chat([{"role": "user", "content": prompt}])
    expected = plain.generate(ids, max_new_tokens=8, repetition_penalty=1.1)  # generate's default
    assert json.loads(r.stdout)["token_ids"] == expected.token_ids
    r = run_cli(*common, "--lookup-branches", "4")  # chain: no tree to graft onto
    assert r.returncode != 0 and "use speculation='tree'" in r.stderr
    r = run_cli(*common, "--speculation", "tree", "--lookup-branches", "-1")
    assert r.returncode == 2 and "--lookup-branches" in r.stderr
