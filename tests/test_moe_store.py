"""Mixture-of-experts stores: each expert one aligned extent (format version 3), a pass reads
only the experts its tokens route to, streamed == in RAM exactly in float32, the budget counts
the expert buffers."""
import hashlib
import json

import pytest
import torch

import specdec.moe
from helpers.family_models import make_family_model
from helpers.family_runs import PROMPT, make_target_and_draft, our_model
from helpers.moe_budget import minimum_ram
from helpers.moe_streams import decode, streamed_model
from offload.budget import BudgetError, LayerSizes, plan_memory
from offload.format import (ALIGN, EXPERT_STORE_VERSION, StoreError, forget_verified, open_store,
                            verify)
from offload.pack import pack

FAMILIES = ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe"]


@pytest.fixture(scope="module")
def moe_store(tmp_path_factory):
    src = tmp_path_factory.mktemp("qwen3_moe")
    make_family_model(src, "qwen3_moe")
    return src, open_store(pack(src, src.parent / "qwen3_moe-store", dtype="float32", progress=False))


def test_each_expert_is_one_aligned_checksummed_extent(moe_store):
    src, store = moe_store
    assert store.manifest["version"] == EXPERT_STORE_VERSION and store.has_experts
    assert not any(".experts." in name for name in store.layer_tensors(0))  # the dense part only
    data = store.expert_file(1).read_bytes()
    extents = store.expert_extents(1)
    assert len(extents) == 8
    for e, x in enumerate(extents):
        assert x.offset % ALIGN == 0 and x.nbytes % ALIGN == 0
        assert hashlib.sha256(data[x.offset:x.offset + x.nbytes]).hexdigest() == x.sha256
        assert sorted(x.tensors) == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
        for part, t in x.tensors.items():
            assert t.offset + t.nbytes <= x.nbytes and t.name == f"mlp.experts.{e}.{part}"
    spans = sorted((x.offset, x.offset + x.nbytes) for x in extents)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two experts overlap
    assert verify(store) == []


def test_dense_stores_are_still_version_2(tmp_path):
    make_family_model(tmp_path / "m", "phi3")
    store = open_store(pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False))
    assert store.manifest["version"] == 2 and not store.has_experts and "expert_files" not in store.manifest


def reference_model(src):
    return our_model(src)


def run(model, ids):
    """A 10-token prompt pass, then single tokens: the logits of all of them."""
    return decode(model, ids, prompt=10)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_by_expert_equals_in_ram_exactly(tmp_path, family):
    """Streamed (experts read as routed, in batches) == the same store held in RAM, bit for
    bit; both within float32 rounding of the checkpoint loaded in RAM (the store's 4096-aligned
    buffers may take other BLAS paths than the checkpoint's tensors: ~1e-6)."""
    make_family_model(tmp_path / "m", family)
    store = open_store(pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False))
    ids = torch.randint(0, 96, (16,), generator=torch.Generator().manual_seed(7))
    in_ram, w_ram = streamed_model(store, pinned=range(3))
    # One slot: a prompt's union of experts comes in batches of one; layer 1 pinned.
    streamed, w_streamed = streamed_model(store, pinned=[1], expert_slots=1)
    with w_ram, w_streamed:
        expected, got = run(in_ram, ids), run(streamed, ids)
        assert w_streamed.stats.experts_read > 0 and w_ram.stats.experts_read == 0
    assert torch.equal(got, expected)
    assert (got - run(reference_model(tmp_path / "m"), ids)).abs().max() <= 1e-5


def test_a_plain_pass_reads_only_the_routed_experts(moe_store, monkeypatch):
    _, store = moe_store
    routed = []

    def recording_route(*args, **kw):
        weights, ids = real_route(*args, **kw)
        routed.append(sorted(set(ids.flatten().tolist())))
        return weights, ids

    real_route = specdec.moe.route
    monkeypatch.setattr(specdec.moe, "route", recording_route)
    model, weights = streamed_model(store, expert_slots=4)
    with weights:
        cache = model.new_cache(16)
        model.forward(torch.tensor([5, 9, 14]), cache.next_positions(3), cache)
        routed.clear()
        before, stats_before = weights._experts.reads.reader.bytes_read, weights.stats.expert_bytes_read
        model.forward(torch.tensor([21]), cache.next_positions(1), cache)  # one token: k=2 experts a layer
        read = weights._experts.reads.reader.bytes_read - before
        want = sum(store.expert_extents(i)[e].nbytes for i, ids in enumerate(routed) for e in ids)
        assert [len(ids) for ids in routed] == [2, 2, 2]
        assert read == want == weights.stats.expert_bytes_read - stats_before
        assert read < sum(store.experts_nbytes(i) for i in range(store.num_layers)) / 3
    forget_verified()


def test_distinct_experts_per_pass_are_counted(moe_store):
    _, store = moe_store
    model, weights = streamed_model(store, expert_slots=8)
    with weights:
        cache = model.new_cache(16)
        model.forward(torch.tensor([21]), cache.next_positions(1), cache)
        assert weights.stats.experts_used == 3 * 2  # 3 layers, 2 routed experts each
        assert weights.stats.experts_read == 6


def test_a_corrupt_expert_is_caught_on_its_first_read(tmp_path):
    make_family_model(tmp_path / "m", "qwen3_moe")
    store = open_store(pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False))
    path = store.expert_file(0)
    data = bytearray(path.read_bytes())
    for x in store.expert_extents(0):  # every expert of layer 0 damaged: whichever is routed
        data[x.offset + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    forget_verified()
    model, weights = streamed_model(open_store(store.path), expert_slots=2)
    with weights, pytest.raises(StoreError, match=r"experts_00000.bin: sha256 mismatch in expert \d"):
        model.forward(torch.tensor([21]), torch.tensor([0]), model.new_cache(4))


def test_a_manifest_with_an_expert_outside_its_extent_is_refused(tmp_path):
    make_family_model(tmp_path / "m", "qwen3_moe")
    out = pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["experts_00001.bin"]["extents"][3][1] = ALIGN  # too short for its tensors
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="experts_00001.bin:mlp.experts.3.* lies outside its expert's extent"):
        open_store(out)


@pytest.mark.parametrize("quant", ["q8", "q4"])
def test_quantized_experts_stream_as_they_compute_in_ram(tmp_path, quant):
    make_family_model(tmp_path / "m", "qwen2_moe")
    store = open_store(pack(tmp_path / "m", tmp_path / "s", dtype="float32", quant=quant, progress=False))
    encodings = {t.dtype for t in store.expert_extents(0)[0].tensors.values()}
    assert encodings == {quant}
    ids = torch.randint(0, 96, (14,), generator=torch.Generator().manual_seed(2))
    pinned, w1 = streamed_model(store, pinned=range(3))
    streamed, w2 = streamed_model(store, expert_slots=3)
    with w1, w2:
        assert torch.equal(run(streamed, ids), run(pinned, ids))


# -- budget ----------------------------------------------------------------------------------
MOE_SIZES = LayerSizes(resident_nbytes=100, layer_nbytes=(50,) * 4, expert_nbytes=(200,) * 4,
                       expert_read_nbytes=25)


def test_plan_pins_dense_parts_then_caches_experts():
    # minimum: resident 100 + ring 2 x 50 + 4 expert buffers x 25 = 300; 125 left: two dense
    # parts (100), then one more expert buffer (cache).
    plan = plan_memory(MOE_SIZES, 425, ring_size=2, overhead_bytes=0, max_context=1, expert_slots=4)
    assert plan.pinned == (0, 1) and plan.pinned_bytes == 100 and not plan.experts_pinned
    assert (plan.expert_slots, plan.expert_cache, plan.expert_buffer_bytes) == (5, 1, 125)
    assert plan.total_bytes == 425 and "5 expert buffers" in plan.summary and "1 of them cache" in plan.summary
    # All four dense parts pinned: the ring is not needed, its 100 bytes become cache as well.
    plan = plan_memory(MOE_SIZES, 550, ring_size=2, overhead_bytes=0, max_context=1, expert_slots=4)
    assert plan.ring_bytes == 0 and plan.pinned_bytes == 200 and plan.expert_slots == 10
    assert plan.total_bytes == 550
    with pytest.raises(BudgetError, match="4 expert buffers 100 B"):
        plan_memory(MOE_SIZES, 299, ring_size=2, overhead_bytes=0, max_context=1, expert_slots=4)
    everything = plan_memory(MOE_SIZES, 10**6, overhead_bytes=0, max_context=1, expert_slots=4)
    assert everything.pinned_bytes == 1000 and everything.expert_buffer_bytes == 0 and everything.experts_pinned
    almost = plan_memory(MOE_SIZES, 1099, ring_size=2, overhead_bytes=0, max_context=1, expert_slots=4)
    assert almost.expert_slots == 4 + (599 + 100) // 25 and almost.total_bytes <= 1099


def test_expert_pool_keeps_the_least_recently_used_out():
    from offload.expert_cache import ExpertPool

    pool = ExpertPool(3, ALIGN)
    where, misses = pool.assign(0, [1, 2])
    assert misses == [1, 2]
    assert pool.assign(0, [1])[1] == []  # a hit; expert 2 is now the least recent
    _, misses = pool.assign(1, [4, 5])  # needs two buffers: the free one and expert 2's
    assert misses == [4, 5] and pool.assign(0, [1])[1] == [] and pool.assign(0, [2])[1] == [2]
    with pytest.raises(ValueError, match="4 experts in one batch"):
        pool.assign(0, [0, 1, 2, 3])


def test_the_expert_cache_serves_a_repeated_pass_without_reads(moe_store):
    _, store = moe_store
    model, weights = streamed_model(store, expert_slots=24)  # every expert of the 3 layers
    with weights:
        cache = model.new_cache(16)
        first = model.forward(torch.tensor([21]), torch.tensor([0]), cache)
        cache.crop(0)
        read = weights.stats.experts_read
        again = model.forward(torch.tensor([21]), torch.tensor([0]), cache)
        assert weights.stats.experts_read == read == 6 and weights.stats.expert_cache_hits == 6
        assert weights.stats.expert_hit_rate == 0.5 == weights.stats.as_dict()["expert_hit_rate"]
    assert torch.equal(first, again)


@pytest.mark.parametrize("pin_experts", [True, False])
def test_pinned_dense_parts_with_streamed_experts(moe_store, pin_experts):
    _, store = moe_store
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(9))
    in_ram, w_ram = streamed_model(store, pinned=range(3))
    pinned, w_pinned = streamed_model(store, pinned=range(3), pin_experts=pin_experts, expert_slots=2)
    with w_ram, w_pinned:
        assert torch.equal(run(pinned, ids), run(in_ram, ids))
        assert (w_pinned.stats.experts_read > 0) == (not pin_experts)


def test_speculative_decoding_streams_experts_under_a_budget(tmp_path):
    """specdec.load on a mixture-of-experts store under a budget that pins nothing: greedy chain
    decoding with a draft gives the target's own greedy tokens; the plan counts the expert
    buffers; the pass reads experts, never whole expert files."""
    import specdec

    target, draft = make_target_and_draft(tmp_path, "qwen3_moe")
    store = pack(target, tmp_path / "store", dtype="float32", progress=False)
    expected = specdec.load(target, dtype="float32").generate(PROMPT, max_new_tokens=20).token_ids
    with specdec.load(store, draft=draft, dtype="float32", ram=minimum_ram(store, draft=draft) + 20_000,
                      max_context=64, k=3) as lm:
        assert not lm.plan.pinned and lm.plan.expert_slots == 4, lm.plan.summary
        out = lm.generate(PROMPT, max_new_tokens=20)
        stats = lm.target.model.weights.stats
    assert out.token_ids == expected and out.stats.accepted > 0
    experts_total = sum(open_store(store).experts_nbytes(i) for i in range(3))
    assert 0 < stats.expert_bytes_read < experts_total * stats.passes
