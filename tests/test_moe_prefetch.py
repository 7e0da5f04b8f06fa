"""A MoE layer's missing experts are read together as soon as the union is known, each handed
over when its own read ended; the next layer's guessed experts may be read ahead. A guess,
right or wrong, changes which bytes are read, never the output."""
import pytest
import torch

from helpers.family_models import make_family_model
from helpers.moe_budget import minimum_ram
from offload.format import forget_verified, open_store
from offload.pack import pack
from offload.prefetch import StreamedWeights
from specdec.config import ModelArgs
from specdec.families import build_model
from specdec.moe_routing import RoutingTrace


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_prefetch")
    make_family_model(root / "m", "qwen2_moe")  # a shared expert computes while experts are read
    return open_store(pack(root / "m", root / "s", dtype="float32", progress=False))


def streamed(store, **kw):
    weights = StreamedWeights(store, **kw)
    return build_model(ModelArgs.from_hf(store.config), weights, torch.float32), weights


def decode(model, ids, prompt=6):
    cache = model.new_cache(64)
    out = [model.forward(ids[:prompt], cache.next_positions(prompt), cache)]
    out += [model.forward(ids[i:i + 1], cache.next_positions(1), cache) for i in range(prompt, len(ids))]
    return torch.cat(out)


IDS = torch.randint(0, 96, (20,), generator=torch.Generator().manual_seed(4))


class WrongGuess:
    """In hindsight (a routing trace of the same run), guess only experts the layer will not
    route to in this pass."""

    def __init__(self, trace: RoutingTrace, experts: int):
        self.trace, self.experts, self.calls = trace, experts, {}

    def record(self, layer, last):
        pass

    def guess(self, layer):
        n = self.calls[layer] = self.calls.get(layer, -1) + 1
        routed = set(self.trace.layers[layer][n].flatten().tolist())
        return [e for e in range(self.experts) if e not in routed]


def test_all_missing_experts_are_submitted_before_the_first_is_used(store):
    model, weights = streamed(store, expert_slots=6)
    with weights:
        reader = weights._experts
        batches = iter(reader.batches(1, [0, 3, 5]))
        assert set(reader.reads.inflight) == {(1, 0), (1, 3), (1, 5)}  # one read each, all issued
        got = [e for batch in batches for e, parts in batch]
        assert got == [0, 3, 5] and not reader.reads.inflight
        assert weights.stats.experts_read == 3 and weights.stats.expert_bytes_read == sum(
            store.expert_extents(1)[e].nbytes for e in (0, 3, 5))


@pytest.mark.parametrize("slots", [2, 4, 12])
def test_prefetch_changes_bytes_never_the_output(store, slots):
    plain_model, plain = streamed(store, expert_slots=slots)
    guessing_model, guessing = streamed(store, expert_slots=slots, expert_prefetch=True)
    wrong_model, wrong = streamed(store, expert_slots=slots, expert_prefetch=True)
    plain_model.routing_observer = trace = RoutingTrace()
    with plain, guessing, wrong:
        expected = decode(plain_model, IDS)
        wrong._experts.prefetch = WrongGuess(trace, 8)
        assert torch.equal(decode(guessing_model, IDS), expected)
        assert torch.equal(decode(wrong_model, IDS), expected)
    extent = store.expert_extents(0)[0].nbytes
    for w in (plain, guessing, wrong):
        s = w.stats
        # Every read is a routed miss or a guess; a used guess is a hit of the layer it was for.
        assert s.experts_read == s.experts_used - s.expert_cache_hits + s.expert_prefetched
        assert s.expert_bytes_read == s.experts_read * extent
    assert plain.stats.expert_prefetched == 0
    if slots == 2:  # one token's 2 experts fill the buffers: no room for a guess
        assert wrong.stats.expert_prefetched == guessing.stats.expert_prefetched == 0
        return
    assert wrong.stats.expert_prefetched > 0 and wrong.stats.expert_prefetch_used == 0
    assert wrong.stats.expert_bytes_read > plain.stats.expert_bytes_read
    # The previous pass's experts: read ahead when the buffers dropped them (4), still held (12).
    assert (guessing.stats.expert_prefetched > 0) == (slots == 4)


def test_a_guess_that_fails_to_read_is_not_an_error(store, monkeypatch):
    """A guessed expert whose read fails (say, corrupt) is dropped; the pass goes on, reading
    what it routed to as usual."""
    model, weights = streamed(store, expert_slots=4, expert_prefetch=True)
    reads = weights._experts.reads
    real = reads._read
    failing = set()

    def read(layer, expert, buf):
        if (layer, expert) in weights._experts._guessed:
            failing.add((layer, expert))
            raise OSError("a guessed read failed")
        return real(layer, expert, buf)

    monkeypatch.setattr(reads, "_read", read)
    plain_model, plain = streamed(store, expert_slots=4)
    with weights, plain:
        assert torch.equal(decode(model, IDS), decode(plain_model, IDS))
    assert failing and weights.stats.expert_prefetch_used == 0
    forget_verified()


def test_load_with_expert_prefetch_decodes_as_without(tmp_path):
    import specdec

    make_family_model(tmp_path / "m", "qwen3_moe", eos_token_id=None)
    path = pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False)
    ram = minimum_ram(path) + 100_000
    outs = []
    for prefetch in (False, True):
        with specdec.load(path, dtype="float32", ram=ram, max_context=64, expert_prefetch=prefetch) as lm:
            out = lm.generate([3, 17, 42, 8], max_new_tokens=12)
            outs.append((out.token_ids, out.stats.source["expert_prefetched"]))
    assert outs[0][0] == outs[1][0] and outs[0][1] == 0 and outs[1][1] > 0


def test_page_cache_reads_give_the_same_output_with_no_expert_cache(tmp_path):
    import specdec

    make_family_model(tmp_path / "m", "qwen3_moe", eos_token_id=None)
    path = pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False)
    ram = minimum_ram(path) + 300_000
    runs = {}
    for reads in ("direct", "page-cache"):
        with specdec.load(path, dtype="float32", ram=ram, max_context=64, expert_reads=reads) as lm:
            out = lm.generate([3, 17, 42, 8], max_new_tokens=12)
            runs[reads] = (out.token_ids, lm.plan, out.stats.source)
    assert runs["direct"][0] == runs["page-cache"][0]
    direct, cached = runs["direct"][1], runs["page-cache"][1]
    assert direct.expert_cache > 0 and cached.expert_cache == 0
    assert cached.expert_slots == direct.expert_slots - direct.expert_cache == 4
    assert runs["page-cache"][2]["experts_read"] > runs["direct"][2]["experts_read"]  # no own cache
    with pytest.raises(ValueError, match="expert_reads must be one of"):
        specdec.load(path, expert_reads="mmap")
