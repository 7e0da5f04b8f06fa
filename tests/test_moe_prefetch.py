"""A MoE layer's missing experts are read together as soon as the union is known, each handed
over when its own read ended; the next layer's guessed experts may be read ahead. A guess,
right or wrong, changes which bytes are read, never the output."""
import functools

import pytest
import torch

from helpers.family_models import make_family_model
from helpers.moe_budget import minimum_ram
from helpers.moe_streams import decode, decode_three_ways, streamed_model
from offload.expert_guess import PreviousPass
from offload.format import forget_verified, open_store
from offload.pack import pack
from specdec.moe_routing import RoutingTrace


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_prefetch")
    make_family_model(root / "m", "qwen2_moe")  # a shared expert computes while experts are read
    return open_store(pack(root / "m", root / "s", dtype="float32", progress=False))


IDS = torch.randint(0, 96, (20,), generator=torch.Generator().manual_seed(4))


class WrongGuess(PreviousPass):
    """In hindsight (a routing trace of the same run), guess only experts the layer will not
    route to in this pass."""

    def __init__(self, trace: RoutingTrace, experts: int):
        super().__init__()
        self.trace, self.experts, self.calls = trace, experts, {}

    def guess(self, layer):
        n = self.calls[layer] = self.calls.get(layer, -1) + 1
        routed = set(self.trace.layers[layer][n].flatten().tolist())
        return [e for e in range(self.experts) if e not in routed]


def guess_wrong_in_hindsight(model, weights, trace: RoutingTrace) -> None:
    """The previous-pass guess replaced by WrongGuess (8 experts a layer)."""
    weights._experts.prefetch = WrongGuess(trace, 8)


def hand_over_wrong_guesses(model, weights, trace: RoutingTrace, experts: int = 8) -> None:
    """The next-router path (the model computes the guess and hands it over), with what it
    hands over replaced by experts the next layer will not route to in this pass (hindsight:
    `trace` of the same run; the model's own trace says which pass it is in)."""
    model.routing_observer = own = RoutingTrace()
    reader = weights._experts
    real = reader.read_ahead

    def wrong(layer, ids):
        routed = set(trace.layers[layer + 1][len(own.layers.get(layer + 1, []))].flatten().tolist())
        real(layer, [e for e in range(experts) if e not in routed])

    reader.read_ahead = wrong


def test_all_missing_experts_are_submitted_before_the_first_is_used(store):
    model, weights = streamed_model(store, expert_slots=6)
    with weights:
        reader = weights._experts
        batches = iter(reader.batches(1, [0, 3, 5]))
        assert set(reader.reads.inflight) == {(1, 0), (1, 3), (1, 5)}  # one read each, all issued
        got = [e for batch in batches for e, parts in batch]
        assert got == [0, 3, 5] and not reader.reads.inflight
        assert weights.stats.experts_read == 3 and weights.stats.expert_bytes_read == sum(
            store.expert_extents(1)[e].nbytes for e in (0, 3, 5))


@pytest.mark.parametrize("slots", [2, 4, 12])
def test_previous_pass_prefetch_changes_bytes_never_the_output(store, slots):
    plain, guessing, wrong = decode_three_ways(store, IDS, slots, "previous-pass",
                                               guess_wrong_in_hindsight)
    assert plain.expert_prefetched == 0
    if slots == 2:  # one token's 2 experts fill the buffers: no room for a guess
        assert wrong.expert_prefetched == guessing.expert_prefetched == 0
        return
    assert wrong.expert_prefetched > 0 and wrong.expert_prefetch_used == 0
    assert wrong.expert_bytes_read > plain.expert_bytes_read
    # The previous pass's experts: read ahead when the buffers dropped them (4), still held (12).
    assert (guessing.expert_prefetched > 0) == (slots == 4)


@pytest.mark.parametrize("slots", [2, 4, 6])
def test_next_router_prefetch_changes_bytes_never_the_output(store, slots):
    plain, guessing, wrong = decode_three_ways(store, IDS, slots, "next-router", hand_over_wrong_guesses)
    if slots == 2:
        assert wrong.expert_prefetched == guessing.expert_prefetched == 0
        return
    assert wrong.expert_prefetched > 0 and wrong.expert_prefetch_used == 0
    assert wrong.expert_bytes_read > plain.expert_bytes_read
    # The real guess reads ahead and is sometimes right (this tiny model's routers are random:
    # how often is a question for a real model, docs/moe.md).
    assert guessing.expert_prefetched > 0 and guessing.expert_prefetch_used > 0


class HandedOver:
    def __init__(self, norm, router):
        self.following, self.got = (norm, router), None

    def next_router(self):
        return self.following

    def read_ahead(self, ids):
        self.got = ids


def test_the_next_router_guess_is_the_next_layers_routing_of_this_residual():
    """Every token's first half of its top k under the next layer's router and norm, the union
    ranked by routing weight; nothing handed over when the source wants no such guess."""
    from offload.expert_names import EXPERT_SOURCE
    from specdec.model import rms_norm
    from specdec.moe import GUESSED_SHARE, read_ahead

    g = torch.Generator().manual_seed(3)
    norm, router, h = torch.rand(16, generator=g) + 0.5, torch.randn(12, 16, generator=g), torch.randn(3, 16, generator=g)
    source = HandedOver(norm, router)
    read_ahead({EXPERT_SOURCE: source}, h, top_k=4, eps=1e-6)
    assert GUESSED_SHARE == 0.5
    probs = torch.softmax(rms_norm(h, norm, 1e-6) @ router.T, -1)
    top = torch.topk(probs, 2, -1)
    mass = {}
    for row_ids, row_p in zip(top.indices.tolist(), top.values.tolist()):
        for e, p in zip(row_ids, row_p):
            mass[e] = mass.get(e, 0.0) + p
    assert source.got == sorted(mass, key=lambda e: -mass[e])
    assert len(source.got) > 2  # the tokens disagree: a union, not one token's experts
    source.following = None
    source.got = "untouched"
    read_ahead({EXPERT_SOURCE: source}, h, top_k=4, eps=1e-6)
    assert source.got == "untouched"


def test_next_router_guesses_from_the_second_pass_with_the_routers_it_saw(store):
    """The routers arrive with their layers: the first pass guesses nothing, each later pass
    guesses every layer but the first; a streamed layer's router is a copy of its own."""
    model, weights = streamed_model(store, expert_slots=6, expert_prefetch="next-router")
    guess = weights._experts.prefetch
    with weights:
        cache = model.new_cache(64)
        model.forward(IDS[:6], cache.next_positions(6), cache)
        assert weights.stats.expert_prefetched == 0 and sorted(guess.routers) == list(range(store.num_layers))
        router = guess.routers[1][1]
        expected = weights._read_owned(1)["mlp.gate.weight"]
        assert torch.equal(router, expected) and router.untyped_storage().nbytes() == expected.numel() * 4
        model.forward(IDS[6:7], cache.next_positions(1), cache)
        assert weights.stats.expert_prefetched > 0


def test_a_guess_that_fails_to_read_is_not_an_error(store, monkeypatch):
    """A guessed expert whose read fails (say, corrupt) is dropped; the pass goes on, reading
    what it routed to as usual."""
    model, weights = streamed_model(store, expert_slots=4, expert_prefetch="previous-pass")
    reads = weights._experts.reads
    real = reads._read
    failing = set()

    def read(layer, expert, buf):
        if (layer, expert) in weights._experts._guessed:
            failing.add((layer, expert))
            raise OSError("a guessed read failed")
        return real(layer, expert, buf)

    monkeypatch.setattr(reads, "_read", read)
    plain_model, plain = streamed_model(store, expert_slots=4)
    with weights, plain:
        assert torch.equal(decode(model, IDS), decode(plain_model, IDS))
    assert failing and weights.stats.expert_prefetch_used == 0
    forget_verified()


def test_the_default_guess_gives_way_where_the_budget_has_no_room_for_routers(tmp_path):
    """At the least RAM a MoE store loads in, the expert cache cannot give up the routers the
    next-router guess keeps: the default then prefetches with the previous pass's experts (no
    RAM of its own) while naming next-router is an error that says why."""
    import specdec

    make_family_model(tmp_path / "m", "qwen3_moe", eos_token_id=None)
    path = pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False)
    ram = minimum_ram(path) + 20_000  # the minimum, rounded up: no expert buffer to spare
    with pytest.raises(ValueError, match="next-router prefetch guess .* more than the expert cache"):
        specdec.load(path, dtype="float32", ram=ram, max_context=64, expert_prefetch="next-router")
    with specdec.load(path, dtype="float32", ram=ram, max_context=64) as lm:
        out = lm.generate([3, 17, 42, 8], max_new_tokens=12)
        assert lm.plan.guess_bytes == 0
    with specdec.load(path, dtype="float32", ram=ram, max_context=64, expert_prefetch=False) as lm:
        plain = lm.generate([3, 17, 42, 8], max_new_tokens=12)
    assert out.token_ids == plain.token_ids
    assert out.stats.source["expert_prefetched"] > 0 == plain.stats.source["expert_prefetched"]


def test_load_with_expert_prefetch_decodes_as_without(tmp_path):
    import specdec

    make_family_model(tmp_path / "m", "qwen3_moe", eos_token_id=None)
    path = pack(tmp_path / "m", tmp_path / "s", dtype="float32", progress=False)
    ram = minimum_ram(path) + 100_000
    runs = {}
    for prefetch in (False, "previous-pass", "next-router", True, "default"):
        chosen = {} if prefetch == "default" else {"expert_prefetch": prefetch}
        with specdec.load(path, dtype="float32", ram=ram, max_context=64, **chosen) as lm:
            out = lm.generate([3, 17, 42, 8], max_new_tokens=12)
            runs[prefetch] = (out.token_ids, out.stats.source["expert_prefetched"], lm.plan)
    assert all(r[0] == runs[False][0] for r in runs.values())
    assert runs[False][1] == 0 and all(runs[p][1] > 0 for p in ("previous-pass", "next-router", True))
    assert runs["default"][1] == runs["next-router"][1]  # on by default, with the next-router guess
    # The next-router guess keeps the streamed layers' routers and norms: the cache gives way.
    off, nxt = runs[False][2], runs["next-router"][2]
    store = open_store(path)
    routers = sum(4 * (t["mlp.gate.weight"].shape[0] + 1) * t["mlp.gate.weight"].shape[1]
                  for t in map(store.layer_tensors, nxt.streamed))
    assert nxt.guess_bytes == routers > 0 and runs["previous-pass"][2].guess_bytes == 0
    assert nxt.expert_cache < off.expert_cache and nxt.total_bytes <= nxt.budget_bytes
    assert "of routers kept for the prefetch guess" in nxt.summary
    with pytest.raises(ValueError, match="expert_prefetch must be one of"):
        specdec.load(path, expert_prefetch="next-token")


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


def command_line_guess(tmp_path, *flags):
    """The expert_prefetch the command line's model flags set."""
    from specdec.cli.commands import build_parser
    from specdec.cli.load_args import settings_from_args

    args = build_parser().parse_args(["generate", "--target", str(tmp_path), "--prompt", "hi", *flags])
    return settings_from_args(args).expert_prefetch


def test_the_command_line_names_the_guess(tmp_path, capsys):
    guess = functools.partial(command_line_guess, tmp_path)
    assert guess() is True  # on by default (the default guess)
    assert guess("--expert-guess", "previous-pass") == "previous-pass"
    assert guess("--expert-guess", "none") is False
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        guess("--expert-guess", "next-token")


def test_the_retired_prefetch_flag_still_runs_changes_nothing_and_says_what_replaced_it(tmp_path, capsys):
    """--expert-prefetch asked for what became the default: a command that passes it still
    runs as without it (with --expert-guess none too), told on stderr which flag to use."""
    from specdec.cli.commands import build_parser

    guess = functools.partial(command_line_guess, tmp_path)
    assert guess("--expert-prefetch") is True
    err = capsys.readouterr().err
    assert err.startswith("specdec: note: --expert-prefetch does nothing") and err.count("\n") == 1
    assert "--expert-guess none turns it off" in err
    assert guess("--expert-prefetch", "--expert-guess", "none") is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    help_text = capsys.readouterr().out
    assert "--expert-guess" in help_text and "--expert-prefetch" not in help_text
