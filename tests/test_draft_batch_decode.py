"""The corpus generator's batched decoding (tools/draft/batch_decode.py): rows that end leave
the batch, and every row still gets what it would get decoded alone, and what transformers'
generate gives the whole batch."""
from __future__ import annotations

import pytest
import torch

from helpers.distribution import pvalue
from specdec.sampling import SamplingParams, probs_from_logits
from tools.draft import batch_decode
from tools.draft.batch_decode import choose, decode_batch

STEPS = 24


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3)
    return LlamaForCausalLM(cfg).eval()


def contexts_of(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 64, (n,), generator=g).tolist() for n in lengths]


def alone(model, ids: list[int], steps: int) -> list[int]:
    """Greedy tokens for one context: full forwards, no cache, no padding (the reference)."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-steps:]


def cut(tokens: list[int], end: int) -> tuple[list[int], bool]:
    return (tokens[:tokens.index(end) + 1], True) if end in tokens else (tokens, False)


def an_end_token(streams: list[list[int]]) -> int:
    """A token that some rows emit at different steps and some never: rows then end apart."""
    def spread(t):
        firsts = {s.index(t) if t in s else None for s in streams}
        return len(firsts) if None in firsts else 0
    end = max(range(64), key=spread)
    assert spread(end) >= 3
    return end


def transformers_generate(model, contexts, max_new, end):
    """What TargetWriter did before: generate on the left-padded batch, cut after `end`."""
    width = max(map(len, contexts))
    inp = torch.full((len(contexts), width), end, dtype=torch.long)
    att = torch.zeros_like(inp)
    for r, x in enumerate(contexts):
        inp[r, width - len(x):], att[r, width - len(x):] = torch.tensor(x), 1
    with torch.no_grad():
        out = model.generate(input_ids=inp, attention_mask=att, max_new_tokens=max_new,
                             eos_token_id=end, pad_token_id=end, do_sample=False)
    return [cut(row, end) for row in out[:, width:].tolist()]


class StepLog:
    """Each forward's batch size and attention-mask width."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.calls.append(tuple(kwargs["attention_mask"].shape))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("room", [batch_decode.ROOM, 3])  # 3: the cache's buffers grow often
def test_greedy_rows_end_apart_and_match_transformers_generate_and_decoding_alone(model, room,
                                                                                  monkeypatch):
    monkeypatch.setattr(batch_decode, "ROOM", room)
    contexts = contexts_of((3, 9, 5, 14, 1, 7))
    streams = [alone(model, c, STEPS) for c in contexts]
    end = an_end_token(streams)
    got = decode_batch(model, contexts, STEPS, end)
    assert got == [cut(s, end) for s in streams]
    assert got == transformers_generate(model, contexts, STEPS, end)
    assert len({len(new) for new, _ in got}) >= 3 and not all(ended for _, ended in got)


def test_finished_rows_are_not_computed_again(model):
    contexts = contexts_of((3, 9, 5, 14, 1, 7))
    end = an_end_token([alone(model, c, STEPS) for c in contexts])
    with StepLog(model) as log:
        got = decode_batch(model, contexts, STEPS, end)
    # prefill, then one forward per step after the first, each over the rows not yet ended
    live = [sum(len(new) > step for new, _ in got) for step in range(1, STEPS)]
    assert [rows for rows, _ in log.calls] == [len(contexts)] + [n for n in live if n]
    assert sum(rows for rows, _ in log.calls[1:]) == sum(len(new) for new, _ in got) - len(contexts)


def test_padding_only_the_ended_rows_needed_is_cut_and_rows_stay_aligned(model):
    # the longest context ends first: the others go on without attending over its padding
    contexts = contexts_of((20, 4, 7, 2), seed=3)
    streams = [alone(model, c, STEPS) for c in contexts]
    end = next(t for t in streams[0][1:] if not any(t in s[:4] for s in streams[1:]))
    with StepLog(model) as log:
        got = decode_batch(model, contexts, STEPS, end)
    assert got[0][1] and len(got[0][0]) < min(len(new) for new, _ in got[1:])
    assert got == [cut(s, end) for s in streams]
    assert min(width for _, width in log.calls) < 20


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampled_decoding_is_fixed_by_the_seed(model, top_p):
    contexts = contexts_of((3, 9, 5, 14, 1, 7) * 2)
    end = an_end_token([alone(model, c, STEPS) for c in contexts])

    def run(seed):
        torch.manual_seed(seed)
        return decode_batch(model, contexts, STEPS, end, 1.0, top_p)

    first = run(5)
    assert run(5) == first and run(6) != first
    for new, ended in first:
        assert end not in new[:-1] and ended == (new[-1] == end)
        assert ended or len(new) == STEPS
    assert any(ended for _, ended in first) and any(len(new) < STEPS for new, _ in first)


@pytest.mark.parametrize("candidates", [batch_decode.CANDIDATES, 2])  # 2: top-p looks further
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (1.3, 0.5)])
def test_the_sampler_draws_specdecs_distribution(monkeypatch, candidates, temperature, top_p):
    monkeypatch.setattr(batch_decode, "CANDIDATES", candidates)
    logits = torch.randn(40, generator=torch.Generator().manual_seed(2)) * 2
    want = probs_from_logits(logits, SamplingParams(temperature=temperature, top_p=top_p))
    torch.manual_seed(0)
    drawn = choose(logits.expand(20_000, -1), temperature, top_p)
    counts = torch.bincount(drawn, minlength=40).float()
    assert pvalue(counts, want) > 1e-3
    assert counts[want == 0].sum() == 0 and (want == 0).any() == (top_p < 1)


def test_no_context_or_no_tokens_decodes_nothing(model):
    # a turn whose every conversation ran out of tokens asks for no follow-ups at all
    assert decode_batch(model, [], STEPS, 0) == []
    assert decode_batch(model, contexts_of((3, 4)), 0, 0) == [([], False), ([], False)]


def test_bf16_runs_and_keeps_the_contract(model):
    import copy

    half = copy.deepcopy(model).to(torch.bfloat16)
    contexts = contexts_of((3, 9, 5))
    got = decode_batch(half, contexts, 8, 0)
    assert len(got) == 3
    assert all(0 < len(new) <= 8 and ended == (new[-1] == 0) for new, ended in got)


def test_a_uniform_draw_at_the_top_picks_the_last_token_with_weight(monkeypatch):
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.ones(*shape))
    assert batch_decode.draw(torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.0, 0.8, 0.0]])).tolist() == [1, 2]
