"""Streaming: exact logits vs resident, prefetch failure handling, RAM planning."""
from __future__ import annotations

import errno
import threading

import pytest
import torch

from helpers.models import make_tiny_model
from offload import format as fmt
from offload.budget import Budget, BudgetError, LayerSizes, parse_size, plan_memory
from offload.checkpoint import open_checkpoint
from offload.format import StoreError, open_store
from offload.pack import pack
from offload.prefetch import StreamedWeights
from offload.reader import DirectReader


@pytest.fixture(autouse=True)
def _fresh_checksums():
    fmt.forget_verified()
    yield
    fmt.forget_verified()


@pytest.fixture(params=["llama", "qwen3"])
def packed(request, tmp_path):
    make_tiny_model(tmp_path / "m", request.param, num_hidden_layers=4)
    store = open_store(pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False))
    return tmp_path / "m", store


def _model(store, weights):
    from specdec.config import ModelArgs
    from specdec.model import Transformer

    return Transformer(ModelArgs.from_hf(store.config), weights, torch.float32)


@pytest.mark.parametrize("pinned, ring", [(None, 1), (None, 2), (2, 2), ({1, 3}, 3), (4, 2)])
def test_streamed_logits_equal_resident_exactly(packed, pinned, ring):
    from specdec.config import ModelArgs
    from specdec.weights import ResidentWeights

    src, store = packed
    args = ModelArgs.from_hf(store.config)
    # clone(): safetensors hands out tensors at addresses 8 mod 64; at unaligned addresses the
    # CPU kernels sum in another order (~1e-7 apart). Store views are page aligned, as are
    # fresh torch allocations, so aligned copies are the fair, exact reference.
    state = {k: v.clone() for k, v in open_checkpoint(src).state_dict().items()}
    resident = ResidentWeights.from_state_dict(state, args, torch.float32)
    with StreamedWeights(store, pinned=pinned, ring_size=ring) as streamed:
        m_res, m_str = _model(store, resident), _model(store, streamed)
        c_res, c_str = m_res.new_cache(64), m_str.new_cache(64)
        for tokens in ([3, 1, 4, 1, 5, 9], [2], [6, 5, 3]):  # prefill, then decode steps
            t = torch.tensor(tokens)
            assert torch.equal(m_res.forward(t, c_res.next_positions(len(t)), c_res),
                               m_str.forward(t, c_str.next_positions(len(t)), c_str))
        assert streamed.stats.passes == 3
        per_pass = streamed.streamed_bytes_per_pass
        assert streamed.stats.bytes_read >= 2 * per_pass  # each pass re-reads the streamed layers


def test_pinned_layers_are_never_reread(packed):
    _, store = packed
    with StreamedWeights(store, pinned=2) as w:
        w.reset_stats()
        for _ in range(3):
            list(w.layers())
        streamed = w.streamed_bytes_per_pass
        assert streamed == store.layer_nbytes(2) + store.layer_nbytes(3)
        # 3 passes; the reader may already be ahead into a 4th, by at most the ring
        assert 3 * streamed <= w.stats.bytes_read <= 3 * streamed + 2 * store.max_layer_nbytes


def test_prefetch_starts_next_pass_before_it_is_asked(packed):
    _, store = packed
    with StreamedWeights(store, ring_size=2) as w:
        list(w.layers())
        w._ring.thread.join(timeout=0.0)
        deadline = threading.Event()
        for _ in range(100):  # the reader fills both slots with layers 0, 1 of the next pass
            if len(w._ring.filled) == 2:
                break
            deadline.wait(0.01)
        assert [layer for layer, _ in w._ring.filled] == [0, 1]


def test_dtype_conversion_per_layer(packed):
    _, store = packed
    with StreamedWeights(store, dtype=torch.bfloat16) as w:
        assert all(t.dtype == torch.bfloat16 for t in w.resident.values())
        for i, layer in enumerate(w.layers()):
            assert all(t.dtype == torch.bfloat16 for t in layer.values())
        assert i == store.num_layers - 1


def test_io_error_in_reader_reaches_caller_and_recovers(packed, monkeypatch):
    _, store = packed
    baseline = threading.active_count()
    real_read = DirectReader.read_file
    fail = {"on": True}

    def flaky(self, path, *args, **kwargs):
        if fail["on"] and path.name == "layer_00002.bin":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_read(self, path, *args, **kwargs)

    monkeypatch.setattr(DirectReader, "read_file", flaky)
    w = StreamedWeights(store, ring_size=2)
    seen = []
    with pytest.raises(OSError, match="Input/output error"):
        for i, _ in enumerate(w.layers()):
            seen.append(i)
    assert seen == [0, 1]  # layers before the bad one were delivered, in order
    assert threading.active_count() == baseline  # the reader thread is joined, no leftovers
    fail["on"] = False
    assert len(list(w.layers())) == store.num_layers  # the next pass restarts the reader
    w.close()
    assert threading.active_count() == baseline


def test_corrupt_layer_caught_on_first_streamed_read(packed):
    _, store = packed
    file = store.layer_file(3)
    data = bytearray(file.read_bytes())
    data[100] ^= 1
    file.write_bytes(bytes(data))
    with StreamedWeights(store) as w, pytest.raises(StoreError) as e:
        list(w.layers())
    assert str(file) in str(e.value) and "specdec pack SRC OUT" in str(e.value)


def test_model_exception_mid_pass_then_next_pass_works(packed):
    _, store = packed
    baseline = threading.active_count()
    with StreamedWeights(store, ring_size=2) as w:
        it = w.layers()
        next(it)
        next(it)
        # the model raised; its traceback keeps the generator alive (not closed)
        again = list(w.layers())
        assert len(again) == store.num_layers
        with pytest.raises(RuntimeError, match="abandoned"):
            next(it)
        it.close()
        assert len(list(w.layers())) == store.num_layers  # the stale close broke nothing
    assert threading.active_count() == baseline


def test_close_joins_thread_and_refuses_new_passes(packed):
    _, store = packed
    baseline = threading.active_count()
    w = StreamedWeights(store)
    it = w.layers()
    next(it)
    assert threading.active_count() == baseline + 1
    w.close()
    w.close()  # idempotent
    assert threading.active_count() == baseline
    with pytest.raises(RuntimeError, match="closed"):
        w.layers()
    with pytest.raises(RuntimeError, match="abandoned"):
        next(it)


def test_dropped_generator_stops_reader(packed):
    _, store = packed
    baseline = threading.active_count()
    with StreamedWeights(store) as w:
        next(w.layers())  # the generator is dropped at once: its close() stops the reader
        assert threading.active_count() == baseline
        assert len(list(w.layers())) == store.num_layers


# -- budget ----------------------------------------------------------------------------------
SIZES = LayerSizes(resident_nbytes=100, layer_nbytes=(50,) * 8)  # 8 layers of 50 bytes


@pytest.mark.parametrize("text, n", [("4GB", 4 * 10**9), ("512MB", 512 * 10**6),
                                     ("1.5GiB", 3 << 29), ("8G", 8 << 30), (1234, 1234),
                                     (" 2 kib ", 2048)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "lots", "4XB", "-1GB", 0])
def test_parse_size_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def _plan(ram, **kw):
    defaults = dict(draft_bytes=40, kv_bytes_per_token_target=1, kv_bytes_per_token_draft=1,
                    max_context=10, ring_size=2, overhead_bytes=0)
    return plan_memory(SIZES, ram, **{**defaults, **kw})


@pytest.mark.parametrize("ram, pinned", [(260, 0), (309, 0), (310, 1), (400, 2), (559, 5), (560, 8),
                                         (10**9, 8)])
def test_plan_pins_what_fits(ram, pinned):
    plan = _plan(ram)  # fixed: 100 + 40 + 20 KV = 160; ring 2 x 50 = 100 -> minimum 260
    assert plan.num_pinned == pinned and plan.pinned == tuple(range(pinned))
    assert plan.total_bytes <= ram
    if pinned == 8:
        assert plan.ring_size == 0 and plan.streamed_bytes_per_pass == 0
    else:
        assert plan.ring_size == 2 and plan.streamed_bytes_per_pass == 50 * (8 - pinned)
    assert f"{pinned}/8" in plan.summary or "all 8" in plan.summary


def test_plan_impossible_budget_states_minimum():
    with pytest.raises(BudgetError, match=r"at least 260 B .*--ram 1MB"):
        _plan(259)
    with pytest.raises(BudgetError, match=r"\(given\) is too small"):
        _plan(259)
    # A budget that was not the user's says whose it is (the demo's default, say).
    with pytest.raises(BudgetError, match=r"259 B \(the demo's default\) is too small"):
        _plan(Budget(259, "the demo's default"))
    assert _plan(Budget(400, "preset x")).budget_reason == "preset x"


def test_plan_from_store_and_default_budget(packed):
    _, store = packed
    plan = plan_memory(store, None, overhead_bytes=0, max_context=8)
    assert "available" in plan.budget_reason and plan.num_pinned == store.num_layers
    assert plan.resident_bytes == store.resident_nbytes
