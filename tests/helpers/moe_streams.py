"""A MoE store streamed by expert (StreamedWeights) under a model, decoded a prompt pass then one
token at a time; and the prefetch tests' three streams of one store: without a guess, with it,
and with it misled into guessing only experts that will not be routed to."""
import torch

from offload.prefetch import StreamedWeights
from specdec.config import ModelArgs
from specdec.families import build_model
from specdec.moe_routing import RoutingTrace


def streamed_model(store, **kw):
    """(model, weights) over `store` streamed with StreamedWeights(store, **kw), float32."""
    weights = StreamedWeights(store, **kw)
    return build_model(ModelArgs.from_hf(store.config), weights, torch.float32), weights


def decode(model, ids, prompt=6):
    """The logits of a `prompt`-token pass, then of single tokens for the rest of `ids`."""
    cache = model.new_cache(64)
    out = [model.forward(ids[:prompt], cache.next_positions(prompt), cache)]
    out += [model.forward(ids[i:i + 1], cache.next_positions(1), cache) for i in range(prompt, len(ids))]
    return torch.cat(out)


def decode_three_ways(store, ids, slots: int, guess: str, mislead):
    """`ids` decoded over three streams of `store` with `slots` expert buffers: no prefetch, the
    `guess` (an expert_prefetch value), and the guess misled by `mislead(model, weights, trace)`
    (`trace`: the plain run's routing, to guess in hindsight what will not be routed to). Checks
    that all three give the same logits and that every read was routed or guessed; returns the
    three streams' stats (plain, guessing, wrong)."""
    plain_model, plain = streamed_model(store, expert_slots=slots)
    guessing_model, guessing = streamed_model(store, expert_slots=slots, expert_prefetch=guess)
    wrong_model, wrong = streamed_model(store, expert_slots=slots, expert_prefetch=guess)
    plain_model.routing_observer = trace = RoutingTrace()
    with plain, guessing, wrong:
        expected = decode(plain_model, ids)
        mislead(wrong_model, wrong, trace)
        assert torch.equal(decode(guessing_model, ids), expected)
        assert torch.equal(decode(wrong_model, ids), expected)
    extent = store.expert_extents(0)[0].nbytes
    for s in (plain.stats, guessing.stats, wrong.stats):
        # Every read is a routed miss or a guess; a used guess is a hit of the layer it was for.
        assert s.experts_read == s.experts_used - s.expert_cache_hits + s.expert_prefetched
        assert s.expert_bytes_read == s.experts_read * extent
    return plain.stats, guessing.stats, wrong.stats
