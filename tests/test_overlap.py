"""Overlapped tree speculation (issue 16): the draft's tree outlives the pass and grows while
the target's layers stream. Lossless (greedy == plain, sampling by chi-square), the tree is
carried over and drafting leaves the critical path on a streamed target, and failures inside
the overlapped draft work (an I/O error, Ctrl-C) leave no thread behind and a usable decoder.
A slowed reader (layer reads sleep) gives the streamed target real waits on any disk."""
from __future__ import annotations

import errno
import math
import threading
import time
from pathlib import Path

import pytest
import torch

import specdec
from helpers.interrupts import ctrl_c_storm, generate_error
from offload.reader import DirectReader
from specdec.bench import soak
from specdec.model import LayerSteps
from specdec.speculate.growing_tree import GrowingTree

PROMPT = [5, 17, 3, 42, 8, 99, 250, 7]
OTHER = [300, 1, 2, 3, 4]
CTX = 256
NEW = 48


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """soak's tiny pair (4 layers of ~1.6 MB, a noised draft), its target packed to a store."""
    from offload.pack import pack

    root = tmp_path_factory.mktemp("overlap")
    target, draft = soak.make_tiny_pair(root)
    store = pack(target, root / "store", dtype="float32", progress=False)
    return target, draft, store


@pytest.fixture(scope="module")
def expected(pair):
    lm = specdec.load(pair[0], dtype="float32", max_context=CTX)
    return {tuple(p): lm.generate(p, max_new_tokens=NEW).token_ids for p in (PROMPT, OTHER)}


def slow_layer_reads(monkeypatch, seconds, fail_from: list | None = None) -> dict:
    """Every layer read sleeps `seconds` first (a slow disk; a function: asked at each read).
    With `fail_from` = [n], reads fail with EIO from the nth layer read on (counted from now)
    until it is set to [None]."""
    real = DirectReader.read_file
    state = {"reads": 0}

    def slow(self, path, *args, **kwargs):
        if Path(path).name.startswith("layer_"):
            state["reads"] += 1
            time.sleep(seconds() if callable(seconds) else seconds)
            if fail_from and fail_from[0] is not None and state["reads"] >= fail_from[0]:
                raise OSError(errno.EIO, "Input/output error", str(path))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(DirectReader, "read_file", slow)
    return state


def streamed(pair, draft=None, **kw):
    _, default_draft, store = pair
    draft = default_draft if draft is None else draft
    ram = soak.streaming_budget(store, draft, dtype="float32", max_context=kw.get("max_context", CTX))
    kw = dict(dict(dtype="float32", max_context=CTX, speculation="overlap"), **kw)
    lm = specdec.load(store, draft=draft, ram=ram, **kw)
    assert lm.plan.streamed
    return lm


def _reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("specdec-prefetch", "specdec-read"))]


# -- the tree ------------------------------------------------------------------------------------
def test_growing_tree_best_nodes_form_a_tree_and_a_subtree_is_renumbered():
    t = GrowingTree()
    a = t.add(10, parent=-1, rank=0, score=-0.1)
    b = t.add(11, parent=-1, rank=1, score=-2.0)
    t.mark_forwarded(t.take_frontier(1))  # a
    assert t.slots[a] == 0 and not t.is_forwarded(b)
    c = t.add(12, parent=a, rank=0, score=-0.2)
    d = t.add(13, parent=a, rank=1, score=-3.0)
    t.mark_forwarded(t.take_frontier(2))  # c, then b
    e = t.add(14, parent=c, rank=0, score=-0.3)
    best = t.best(4)
    assert best == [a, c, e, b]  # by score, parents first
    sent = t.draft_tree(best)
    assert sent.tokens == [10, 12, 14, 11] and sent.parents == [-1, 0, 1, -1]
    mask = t.batch_mask([e, d], context=5)  # e's ancestors: c (slot 1), a (slot 0)
    assert mask.shape == (2, 5 + 3 + 2)
    assert mask[0].tolist() == [True] * 5 + [True, True, False] + [True, False]
    assert mask[1].tolist() == [True] * 5 + [True, False, False] + [False, True]
    sub, kept = t.subtree(a, hit_logp=lambda rank, depth, confidence: math.log(0.5))
    assert sub.tokens == [12, 13, 14] and sub.parents == [-1, -1, 0] and sub.depths == [1, 1, 2]
    assert sub.scores == pytest.approx([math.log(0.5), math.log(0.5), 2 * math.log(0.5)])
    assert kept == [1] and sub.slots == [0, -1, -1] and sub.forwarded == 1
    assert sub.take_frontier(5) == [1, 2]  # d and e wait to be forwarded; c is


def test_nodes_of_a_dropped_forward_go_back_to_the_frontier_in_score_order():
    t = GrowingTree()
    a = t.add(10, parent=-1, rank=0, score=-0.1)
    b = t.add(11, parent=-1, rank=1, score=-2.0)
    c = t.add(12, parent=-1, rank=2, score=-3.0)
    taken = t.take_frontier(2)
    assert taken == [a, b] and t.best_frontier_score() == -3.0
    t.requeue(taken)
    assert t.frontier_scores(3) == [-0.1, -2.0, -3.0] and t.forwarded == 0
    assert t.take_frontier(3) == [a, b, c]


def test_a_carried_over_tree_is_rescored_by_rank_depth_below_its_new_root_and_draft_probability():
    t = GrowingTree()
    a = t.add(10, parent=-1, rank=0, score=-0.1, confidence=0.9)
    t.mark_forwarded(t.take_frontier(1))
    c = t.add(12, parent=a, rank=0, score=-0.2, confidence=0.97)
    t.mark_forwarded(t.take_frontier(1))
    t.add(14, parent=c, rank=1, score=-0.3, confidence=0.3)
    seen = []

    def hit_logp(rank, depth, confidence):
        seen.append((rank, depth, confidence))
        return math.log(confidence)
    sub, _ = t.subtree(a, hit_logp)
    assert seen == [(0, 1, 0.97), (1, 2, 0.3)]
    assert sub.scores == pytest.approx([math.log(0.97), math.log(0.97 * 0.3)])
    assert sub.draft_tree([0, 1]).confidences == [0.97, 0.3]  # the walk's stats see them


def test_pass_model_floors_the_compute_fit_at_the_disk_time():
    from specdec.speculate.overlap import PassModel
    from specdec.speculate.tree_model import TreeCostModel

    m = PassModel(TreeCostModel(4))
    m.observe(10, wall=1.0, wait=0.8, delay=0.0)   # compute 0.2 s, the rest waiting for the disk
    m.observe(50, wall=1.05, wait=0.4, delay=0.05)  # compute 0.6 s; 0.05 s was draft overshoot
    assert m.disk_seconds == pytest.approx(1.0)
    assert m.seconds(10) == pytest.approx(1.0)  # disk-bound: small passes cost the read
    assert m.seconds(100) == pytest.approx(1.1)  # compute-bound past ~90 tokens: 0.1 + 0.01/token
    m.observe(100, wall=0.9, wait=0.0, delay=0.0)  # never waited: the disk takes <= 0.9 s
    assert m.disk_seconds == pytest.approx(0.9)


def test_pass_model_takes_the_disk_time_from_the_reader_not_from_compute_bound_passes():
    """Passes that are mostly compute but waited a little (an AVX2 int4 pass of ~12 tokens)
    do not make the disk look slow: the reader's own time for a pass's layers is the disk's,
    so a pass of 12 tokens costs its compute and one of 2 the read. Taking such passes' wall
    time for the disk's made every size up to 12 look as dear as 12, so free to fill."""
    from specdec.speculate.overlap import PassModel
    from specdec.speculate.tree_model import TreeCostModel

    def after(read):
        m = PassModel(TreeCostModel(4))
        m.observe(2, wall=1.8, wait=0.6, delay=0.0, read=read)  # compute 1.2 s, reads 1.6 s
        for _ in range(3):
            m.observe(12, wall=3.2, wait=0.2, delay=0.0, read=read)  # compute 3.0 s
        return m

    m = after(read=1.6)
    assert m.disk_seconds == pytest.approx(1.6)
    assert m.seconds(12) == pytest.approx(3.2, abs=0.05)  # compute + 0.2 s that overlapped nothing
    assert m.seconds(2) == pytest.approx(1.8, abs=0.05)   # the read + the same 0.2 s
    old = after(read=None)  # no reader time: the passes that waited set the disk's time
    assert old.disk_seconds > 2.4 and old.seconds(2) > 2.4  # the reads take 1.6 s


# -- the weights source's idle hook --------------------------------------------------------------
def test_idle_work_runs_in_the_waits_and_changes_no_layer(pair, monkeypatch):
    from offload.prefetch import StreamedWeights

    with StreamedWeights(pair[2], ring_size=2) as w:
        reference = [{k: v.clone() for k, v in layer.items()} for layer in w.layers()]
    slow_layer_reads(monkeypatch, 0.02)
    calls = {"n": 0, "etas": []}

    def busy(eta):
        calls["n"] += 1
        calls["etas"].append(eta)
        time.sleep(0.002)
        return True

    def nothing_to_do(eta):
        calls["n"] += 1
        return False

    with StreamedWeights(pair[2], ring_size=2) as w:
        for layer, ref in zip(w.layers(idle=busy), reference):
            assert all(torch.equal(layer[k], ref[k]) for k in ref)
        assert calls["n"] >= 10  # ~20 ms waits filled with 2 ms calls
        # once a read is timed, the source says how long the next one has left
        assert all(e is None or 0 <= e < 1 for e in calls["etas"]) and any(calls["etas"])
        assert w.stats.idle_seconds > 0 and w.stats.compute_wait_seconds > 0
        assert w.stats.idle_delay_seconds < 0.05
        calls["n"] = 0
        assert len(list(w.layers(idle=nothing_to_do))) == 4
        assert 1 <= calls["n"] <= 4  # asked once per wait, then it just waits


# -- lossless ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [None, 8])
def test_greedy_overlap_in_ram_equals_plain_decoding(pair, expected, size):
    target, draft, _ = pair
    for d in (target, draft):
        lm = specdec.load(target, draft=d, dtype="float32", max_context=CTX, speculation="overlap",
                          tree_nodes=size)
        for prompt in (PROMPT, OTHER, PROMPT):
            out = lm.generate(prompt, max_new_tokens=NEW)
            assert out.token_ids == expected[tuple(prompt)], (d.name, prompt)
        if size is not None:  # adaptive sizes may rightly decide drafting does not pay here
            assert out.stats.accepted > 0


def test_greedy_overlap_streamed_equals_plain_decoding(pair, expected, monkeypatch):
    slow_layer_reads(monkeypatch, 0.005)
    for d in (pair[0], pair[1]):
        lm = streamed(pair, draft=d)
        for prompt in (PROMPT, OTHER):
            out = lm.generate(prompt, max_new_tokens=NEW)
            assert out.token_ids == expected[tuple(prompt)], (d.name, prompt)
            assert out.stats.counters["draft_forwards_hidden"] > 0  # the tree grew during passes
        lm.close()


@pytest.mark.slow
def test_sampling_overlap_streamed_matches_target_distribution(tmp_path, monkeypatch):
    """The first two tokens of 3-token generations (so the second pass verifies a carried
    tree) follow the target's own distribution; the draft's is clearly rejected."""
    from offload.pack import pack
    from helpers.models import make_noised_copy, make_tiny_model, sharpen_lm_head
    from helpers.distribution import exact_two_token_distribution, pvalue, pvalue_against, sample_two_tokens
    from specdec.sampling import SamplingParams

    target, draft = tmp_path / "t", tmp_path / "d"
    # ~1.6 MB layers: the smallest budget streams them instead of pinning
    make_tiny_model(target, "llama", vocab_size=16, intermediate_size=2048, eos_token_id=None)
    sharpen_lm_head(target, 40.0)
    make_noised_copy(target, draft, scale=0.5)
    sampling = dict(temperature=0.8, top_k=6, top_p=0.9)
    exact = exact_two_token_distribution(target, SamplingParams(**sampling))
    draft_exact = exact_two_token_distribution(draft, SamplingParams(**sampling))
    store = pack(target, tmp_path / "store", dtype="float32", progress=False)
    ram = soak.streaming_budget(store, draft, dtype="float32", max_context=32)
    lm = specdec.load(store, draft=draft, ram=ram, dtype="float32", max_context=32,
                      speculation="overlap", tree_nodes=6)
    assert lm.plan.streamed
    weights = lm.target.model.weights
    slow_layer_reads(monkeypatch, 0.001)
    counts, totals = sample_two_tokens(lm, 500, max_new_tokens=3, **sampling)
    lm.close()
    assert weights.stats.idle_seconds > 0
    assert 0 < totals["accepted"] < totals["drafted"]
    assert totals.get("passes_carried", 0) > 20  # second passes really verified carried-over trees
    assert pvalue(counts, exact) > 1e-3
    assert pvalue_against(counts, draft_exact) < 1e-6


# -- the point of it ----------------------------------------------------------------------------
def test_same_weights_streamed_carries_the_tree_and_drafts_off_the_critical_path(pair, expected, monkeypatch):
    """Draft == target: every proposal of rank 0 is right, so each pass's accepted path and
    the target's next token are in the tree the draft grew during the pass."""
    # Each read as long as 30 draft forwards (as measured so far; at least 50 ms): a forward
    # fits many times into each wait however busy the machine, whose load slows the forwards
    # (~1 ms idle, 50 ms at load 15 on 2 cores). The property is where the forwards happen.
    lm = streamed(pair, draft=pair[0])
    cost = lm.engine.strategy.cost
    slow_layer_reads(monkeypatch, lambda: max(0.05, 30 * cost.draft_forward_seconds))
    out = lm.generate(PROMPT, max_new_tokens=160)
    s = out.stats.counters
    lm.close()
    assert out.token_ids[:NEW] == expected[tuple(PROMPT)]
    assert out.stats.rejected == 0
    assert s["passes_carried"] >= out.stats.target_passes - 2
    assert s["tree_nodes_carried"] > 0
    assert s["draft_seconds_hidden"] > 0
    # Drafting happens while the target waits for the disk: most of the tree is grown in the
    # waits. Before a pass the draft grows the best branch a node at a time while that pays
    # (here, with passes 30 forwards long, often), in the waits eight nodes a forward; counted
    # in nodes, not seconds, so a loaded machine (slower forwards) does not decide it.
    assert s["draft_nodes_critical"] < 0.25 * s["draft_nodes_forwarded"], s
    assert out.stats.tokens_per_pass > 8


def test_each_wait_runs_one_draft_layer_and_forwards_span_several_waits(pair, expected, monkeypatch):
    """The target's layer that arrives while the draft works waits for one draft layer at
    most: every idle call runs exactly one LayerSteps.step."""
    lm = streamed(pair, tree_nodes=8)  # fixed: the adaptive gate may rightly stop drafting
    strategy = lm.engine.strategy
    real_step, real_idle = LayerSteps.step, strategy._idle
    per_call, finished = [], []

    def idle(*args):
        per_call.append(0)
        return real_idle(*args)

    def step(self):
        per_call[-1] += 1
        done = real_step(self)
        finished.append(done)
        return done

    monkeypatch.setattr(strategy, "_idle", idle)
    monkeypatch.setattr(LayerSteps, "step", step)
    slow_layer_reads(monkeypatch, 0.01)
    out = lm.generate(PROMPT, max_new_tokens=NEW)
    lm.close()
    assert out.token_ids == expected[tuple(PROMPT)]
    worked = [n for n in per_call if n]
    assert worked and max(worked) == 1
    layers = strategy.drafter.model.args.num_layers
    assert layers > 1 and finished.count(True) >= 2  # forwards finished, each over `layers` waits
    assert out.stats.counters["draft_forwards_hidden"] == finished.count(True)


# -- failures -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_io_error_mid_pass_while_the_draft_grows(pair, expected, monkeypatch):
    lm = streamed(pair, tree_nodes=8)  # fixed: the adaptive gate may rightly stop drafting
    weights = lm.target.model.weights
    assert lm.generate(PROMPT, max_new_tokens=NEW).token_ids == expected[tuple(PROMPT)]
    assert weights.wait_prefetched(timeout=30)
    threads = threading.active_count()
    fail_from = [6]
    slow_layer_reads(monkeypatch, 0.01, fail_from)
    idle_before = weights.stats.idle_seconds
    error = generate_error(lm, OTHER, NEW)
    assert isinstance(error, OSError) and error.errno == errno.EIO, error
    assert weights.stats.idle_seconds > idle_before  # the draft was growing in the waits
    assert _reader_threads() == []
    assert threading.active_count() == threads - 1  # the prefetch thread is gone, nothing else
    fail_from[0] = None
    assert lm.generate(OTHER, max_new_tokens=NEW).token_ids == expected[tuple(OTHER)]
    assert lm.generate(PROMPT, max_new_tokens=NEW).token_ids == expected[tuple(PROMPT)]
    lm.close()
    assert _reader_threads() == []


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid_forward", "after_commit"])
def test_ctrl_c_inside_the_overlapped_draft_leaves_a_usable_decoder(pair, expected, monkeypatch, when):
    """KeyboardInterrupt from a draft layer run in the target's wait: part way through a
    forward (a layer's keys/values written past the cache's length) or right after the step
    that committed a forward (cache entries the tree does not know yet)."""
    slow_layer_reads(monkeypatch, 0.005)
    lm = streamed(pair)
    strategy = lm.engine.strategy
    real_step, real_idle = LayerSteps.step, strategy._idle
    calls = {"n": 0, "in_idle": False, "raised": False}

    def idle(*args):  # the plan hands this to the target's forward as Plan.idle
        calls["in_idle"] = True
        try:
            return real_idle(*args)
        finally:
            calls["in_idle"] = False

    def interrupted(self):
        if not calls["in_idle"] or calls["raised"]:
            return real_step(self)
        calls["n"] += 1
        if when == "mid_forward" and calls["n"] == 6:  # the 2nd layer of the 2nd forward
            calls["raised"] = True
            raise KeyboardInterrupt
        done = real_step(self)
        if when == "after_commit" and calls["n"] >= 5 and done:
            calls["raised"] = True
            raise KeyboardInterrupt
        return done

    monkeypatch.setattr(strategy, "_idle", idle)
    monkeypatch.setattr(LayerSteps, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lm.generate(PROMPT, max_new_tokens=NEW)
    assert calls["raised"]
    assert _reader_threads() == []  # the pass was abandoned: its reader stopped
    monkeypatch.setattr(LayerSteps, "step", real_step)
    for prompt in (PROMPT, OTHER, PROMPT):
        assert lm.generate(prompt, max_new_tokens=NEW).token_ids == expected[tuple(prompt)]
    lm.close()
    assert _reader_threads() == []


@pytest.mark.slow
def test_soak_2000_tokens_flat_threads_and_ram(pair):
    # Draft == target, sampled: long accepted paths, trees carried over and re-rooted on most
    # passes, and still a rollback now and then (a sample outside the draft's proposals).
    lm = streamed(pair, draft=pair[0], max_context=4096)
    started = time.process_time()  # CPU seconds: a busy machine stretches the wall clock
    summary = soak.soak(lm, turns=20, tokens_per_turn=100, temperature=0.8, log=lambda line: None)
    lm.close()
    assert summary["tokens"] == 2000
    assert summary["rejected_drafts"] > 100
    assert summary["threads"]["end"] <= summary["threads"]["after_turn_1"]
    assert summary["threads"]["max"] <= summary["threads"]["after_turn_1"] + 1  # + a read pool mid-pass
    assert summary["rss_mb"]["growth_after_turn_1"] < 16, summary["rss_mb"]
    assert _reader_threads() == []
    assert time.process_time() - started < 60  # no slowdown as the turns add up (~15 s idle)


# -- surface --------------------------------------------------------------------------------------
def test_overlap_is_a_speculation_mode_with_its_stats_in_the_dict(pair):
    from specdec.cli import build_parser

    lm = specdec.load(pair[0], draft=pair[1], dtype="float32", max_context=CTX, speculation="overlap")
    assert "overlapped tree" in lm.engine.strategy.describe()
    stats = lm.generate(PROMPT, max_new_tokens=8).stats.to_dict()
    assert {"draft_seconds_critical", "tree_nodes_sent", "tree_nodes_grown"} <= set(stats)
    assert stats["target_passes"] >= 1 and "tokens_per_pass" in stats  # the usual keys stay
    args = build_parser().parse_args(["generate", "--prompt", "x", "--speculation", "overlap"])
    assert args.speculation == "overlap"
    with pytest.raises(ValueError, match="speculation must be one of"):
        specdec.load(pair[0], draft=pair[1], dtype="float32", speculation="overlapped")


@pytest.mark.slow
def test_real_ctrl_c_at_random_moments_leaves_a_correct_decoder(pair, expected, monkeypatch):
    """SIGINT lands wherever the main thread is: in a draft forward inside a layer wait, in
    the re-rooting, in a pass. After each, the decoder still gives the reference output."""
    slow_layer_reads(monkeypatch, 0.005)
    lm = streamed(pair)
    started = time.perf_counter()
    assert lm.generate(PROMPT, max_new_tokens=16).token_ids == expected[tuple(PROMPT)][:16]
    duration = time.perf_counter() - started
    assert ctrl_c_storm(lm, [PROMPT, OTHER], expected, duration, rounds=8) >= 3
    lm.close()
    assert _reader_threads() == []
