"""The tree strategy's parts: ancestry and masks, node positions, the cost model (pass-time
fit, per-rank rates) and the builder's stopping rules; a tree's one-pass logits equal
feeding each node's path on its own."""
import math

import pytest
import torch

import specdec
from helpers.models import make_tiny_model
from specdec.draft import Drafter
from specdec.sampling import SamplingParams
from specdec.speculate.base import Step
from specdec.speculate.tree import Tree, TreeSettings, build_tree
from specdec.speculate.tree_pass import node_positions
from specdec.speculate.tree_model import PRIOR_HIT_RATES, DraftTree, TreeCostModel

GREEDY = SamplingParams(0.0, 0, 1.0)


def small_tree() -> DraftTree:
    # root -> 0 (token 5) -> 1 (token 7) -> 3 (token 9); root -> 2 (token 6)
    t = DraftTree()
    t.add(5, parent=-1, rank=0, cum_logp=math.log(0.5))
    t.add(7, parent=0, rank=0, cum_logp=math.log(0.25))
    t.add(6, parent=-1, rank=1, cum_logp=math.log(0.1))
    t.add(9, parent=1, rank=0, cum_logp=math.log(0.125))
    return t


def test_ancestry_depths_and_children():
    t = small_tree()
    assert t.depths == [1, 2, 1, 3]
    assert t.ancestry().int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 1]]
    assert t.ancestry(2).int().tolist() == [[1, 0], [1, 1]]
    assert t.child(-1, 6) == 2 and t.child(0, 6) is None
    assert sorted(t.children(-1)) == [0, 2] and t.children(3) == []
    assert t.expected_accepted() == pytest.approx(0.5 + 0.25 + 0.1 + 0.125)
    assert t.expected_accepted(2) == pytest.approx(0.75)


def test_attention_mask_sees_context_and_own_ancestors_only():
    t = small_tree()
    m = t.attention_mask(context=3, first=1, count=3)  # nodes 0 cached, 1..3 fed now
    assert m.shape == (3, 3 + 4)
    assert m[:, :3].all()  # every node sees the whole context
    assert m[:, 3:].int().tolist() == [[1, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 1]]


def test_node_positions_put_siblings_at_the_same_depth():
    assert node_positions(10, [1, 2, 1, 3]).tolist() == [10, 11, 10, 12]


def test_pass_time_fit_is_linear_in_tokens():
    cost = TreeCostModel(width=4)
    assert cost.pass_seconds(0) == 1.0 and cost.pass_seconds(256) == pytest.approx(2.0)  # prior
    cost.observe_pass(10, 2.0)
    # one size seen: a 256-token pass assumed to cost twice a 1-token one
    a = 2.0 / (1 + 10 / 256)
    assert cost.pass_seconds(0) == pytest.approx(a) and cost.pass_seconds(256) == pytest.approx(2 * a)
    cost = TreeCostModel(width=4)
    for n in (1, 21, 41, 61, 81, 101):
        cost.observe_pass(n, 1.0 + 0.01 * n)
    assert cost.pass_seconds(51) == pytest.approx(1.51)
    assert cost.pass_seconds(1001) == pytest.approx(11.01)
    falling = TreeCostModel(width=4)
    for n, s in ((1, 2.0), (100, 1.0)):
        falling.observe_pass(n, s)
    assert falling.pass_seconds(1) == falling.pass_seconds(100)  # slope clamped at 0
    window = TreeCostModel(width=4, history=2)
    for n, s in ((1, 100.0), (10, 1.0), (20, 1.0)):
        window.observe_pass(n, s)
    assert window.pass_seconds(5) == pytest.approx(1.0)  # only the last `history` passes


def test_per_rank_rates_follow_the_walks():
    cost = TreeCostModel(width=2)
    assert math.exp(cost.rank_logp(0)) == pytest.approx(PRIOR_HIT_RATES[0])
    t = DraftTree()
    t.add(5, parent=-1, rank=0, cum_logp=0.0)
    t.add(6, parent=-1, rank=1, cum_logp=0.0)
    t.add(7, parent=0, rank=0, cum_logp=0.0)
    cost.observe_walk(t, [0], next_token=9)  # took rank 0 at the root, missed below
    assert cost.hits == [1.0, 0.0] and cost.visits == [2.0, 1.0]
    for _ in range(200):
        cost.observe_walk(t, [], next_token=6)  # the target always takes the runner-up
    assert math.exp(cost.rank_logp(1)) > 0.95
    assert math.exp(cost.rank_logp(0)) < 0.05


@pytest.fixture(scope="module")
def drafter(tmp_path_factory):
    path = tmp_path_factory.mktemp("tree_draft")
    make_tiny_model(path, "llama", eos_token_id=None)
    model = specdec.load(path, dtype="float32").target.model
    return Drafter(model, 128, model.args.vocab_size)


CONTEXT = [3, 17, 42, 8, 61, 5]


def test_builder_fixed_size_stops_at_max_nodes_and_skips_the_useless_forward(drafter):
    drafter.keep(0)
    tree = build_tree(drafter, CONTEXT, 12, 3, GREEDY, TreeCostModel(3), 1, True)
    assert len(tree) == 12
    # the last node taken is never forwarded: its children could not be used
    assert tree.forwarded < 12
    assert drafter.cache.length == len(CONTEXT) + tree.forwarded
    assert all(len(tree.children(n)) <= 3 for n in range(-1, 12))
    for i, p in enumerate(tree.parents):  # best first: a parent is never less likely
        assert p < i and (p < 0 or tree.cum_logp[p] >= tree.cum_logp[i])


def test_builder_stops_when_the_cost_model_says_nodes_do_not_pay(drafter):
    expensive = TreeCostModel(3)
    expensive.observe_draft(100.0)  # a draft forward far dearer than a target pass
    drafter.keep(0)
    tree = build_tree(drafter, CONTEXT, 32, 3, GREEDY, expensive, 1, False)
    # the root's proposals come with the catch-up the draft needs anyway; nothing more
    assert len(tree) == 3 and tree.forwarded == 0
    cheap = TreeCostModel(3)
    cheap.observe_draft = lambda seconds: None  # draft forwards stay free, whatever this CPU takes
    for n in (1, 64):
        cheap.observe_pass(n, 1.0)  # and a flat pass cost: every node pays
    drafter.keep(0)
    assert len(build_tree(drafter, CONTEXT, 32, 3, GREEDY, cheap, 1, False)) == 32


def _sure_of_its_favourite(forward_seconds: float | None) -> TreeCostModel:
    """A cost model that has seen the target take the draft's favourite 95% of the time, with
    a flat 1-second pass and draft forwards of `forward_seconds` (None: free)."""
    cost = TreeCostModel(3)
    seen = DraftTree()
    seen.add(5, parent=-1, rank=0, cum_logp=0.0)
    seen.add(6, parent=-1, rank=1, cum_logp=0.0)
    for i in range(100):
        cost.observe_walk(seen, [0] if i % 20 else [], next_token=9 if i % 20 else 7)
    for n in (1, 64):
        cost.observe_pass(n, 1.0)
    if forward_seconds is None:
        cost.observe_draft = lambda seconds: None
    else:
        cost.observe_draft(forward_seconds)
        cost.observe_draft = lambda seconds: None
    return cost


def test_a_cheap_draft_grows_deep_trees_and_a_dear_one_wide(drafter):
    """With the favourite taken 95% of the time, 16 nodes belong mostly on one line: a draft
    forward that costs nothing runs the draft on each node as soon as its children would
    beat the other candidates (8 levels and more; batches of eight reached 3). One that
    costs as much as a pass waits until no candidate is left, level by level."""
    drafter.keep(0)
    deep = build_tree(drafter, CONTEXT, 16, 3, GREEDY, _sure_of_its_favourite(None), 1, True)
    assert max(deep.depths) >= 8
    drafter.keep(0)
    wide = build_tree(drafter, CONTEXT, 16, 3, GREEDY, _sure_of_its_favourite(1.0), 1, True)
    assert max(wide.depths) <= 3
    for tree in (deep, wide):
        assert len(tree) == 16
        for i, p in enumerate(tree.parents):
            assert p < i


def test_overlap_grows_a_restarted_tree_deep_where_the_draft_is_sure(drafter):
    """The overlapped tree restarted from its root (a walk that left the forwarded tree)
    grows on the critical path a node at a time, the best, while a forward pays: with the
    favourite taken 95% of the time and cheap forwards, one line deep (batches of eight
    filled the pass's size with proposals 3 levels down); with forwards as dear as a pass,
    the root's proposals alone."""
    from specdec.speculate.overlap import Overlap, PassModel

    def sent(forward_seconds: float) -> DraftTree:
        drafter.keep(0)
        strategy = Overlap(drafter, TreeSettings(max_nodes=64, width=3))
        strategy.cost = _sure_of_its_favourite(forward_seconds)
        strategy.passes = PassModel(strategy.cost)
        cache = drafter.model.new_cache(128)
        return strategy.plan(Step(CONTEXT, cache, 32, GREEDY, None)).state.sent

    assert max(sent(1e-3).depths) >= 8
    assert sent(1.0).depths == [1, 1, 1]


def test_overlap_grows_a_carried_tree_deeper_where_the_waits_grew_it_wide(drafter):
    """A tree the waits grew (batches of eight, breadth first: 3 levels, more nodes than the
    pass holds) still grows on the critical path, a node at a time along its best branch,
    while a forward pays: with the favourite taken 95% of the time and cheap forwards the
    pass goes deep. (Growth stopped once the tree had the pass's size: depth 3.)"""
    from specdec.speculate.overlap import Overlap, PassModel

    drafter.keep(0)
    strategy = Overlap(drafter, TreeSettings(max_nodes=16, width=3))
    strategy.cost = _sure_of_its_favourite(1e-3)
    strategy.passes = PassModel(strategy.cost)
    strategy._params = GREEDY
    strategy._sync(CONTEXT)
    while max(strategy.tree.depths) < 3 or strategy._forward is not None:
        assert strategy._idle()  # a layer of a draft forward, as in a wait for the disk
    assert len(strategy.tree) > 16
    cache = drafter.model.new_cache(128)
    sent = strategy.plan(Step(CONTEXT, cache, 32, GREEDY, None)).state.sent
    assert len(sent) <= 16 and max(sent.depths) >= 6
    for i, p in enumerate(sent.parents):
        assert p < i


def test_tree_pass_logits_equal_each_path_fed_alone(drafter):
    """The positions and mask the tree strategy builds make one pass over context + tree
    score every node exactly as feeding its own path after the context would."""
    model = drafter.model
    drafter.keep(0)
    strategy = Tree(Drafter(model, 128, model.args.vocab_size), TreeSettings(max_nodes=10, fixed=True))
    cache = model.new_cache(128)
    model.forward(torch.tensor(CONTEXT[:4]), cache.next_positions(4), cache)  # 2 uncached tokens
    plan = strategy.plan(Step(CONTEXT, cache, 32, GREEDY, None))
    tree = plan.state.tree
    assert len(tree) == 10 and plan.num_logits == 11
    logits = model.forward(plan.tokens, plan.positions, cache, mask=plan.mask, num_logits=plan.num_logits)
    for node in range(-1, len(tree)):
        path, n = [], node
        while n >= 0:
            path.insert(0, tree.tokens[n])
            n = tree.parents[n]
        alone = model.new_cache(128)
        ids = CONTEXT + path
        want = model.forward(torch.tensor(ids), torch.arange(len(ids)), alone)[-1]
        torch.testing.assert_close(logits[node + 1], want, atol=1e-4, rtol=1e-4)


def test_tree_width_beyond_64_works(tmp_path):
    make_tiny_model(tmp_path, "llama", eos_token_id=None)
    plain = specdec.load(tmp_path, dtype="float32").generate(CONTEXT, max_new_tokens=6).token_ids
    lm = specdec.load(tmp_path, draft=tmp_path, dtype="float32", speculation="tree", tree_width=65,
                      tree_nodes=80)
    assert lm.generate(CONTEXT, max_new_tokens=6).token_ids == plain
    with pytest.raises(ValueError, match="tree_width must be a positive integer"):
        specdec.load(tmp_path, draft=tmp_path, speculation="tree", tree_width=0)
