"""The broad draft corpus (tools/draft): the held-out guard, the shard format and manifest,
the generator's refusal of held-out prompts, and the per-depth acceptance arithmetic."""
from __future__ import annotations

import argparse
import random
import time

import pytest
import torch

from tools.draft import corpus_gen
from tools.draft.corpus_recipe import OPENERS, plan_batch, plan_opening, written_prompts
from tools.draft.corpus_shards import Conversation, Corpus, decode_shard, encode_shard
from tools.draft.files import eval_prompts
from tools.draft.held_out import HeldOut, independent_prompts, normalise
from tools.draft.measure import depth_rates


def test_the_independent_set_is_two_halves_of_distinct_prompts():
    open_, hidden = independent_prompts("open"), independent_prompts("hidden")
    assert len(open_) == len(hidden) == 20
    both = independent_prompts()
    assert len({p.lower() for p in both}) == 40
    assert not {p.lower() for p in both} & {p.lower() for p in eval_prompts()}
    with pytest.raises(ValueError, match="half"):
        independent_prompts("train")


def test_the_guard_refuses_held_out_prompts_and_their_close_copies():
    held = HeldOut()
    for p in independent_prompts() + eval_prompts():
        assert held.refuses(p)
        assert held.refuses(p.upper() + "!!")
        assert held.refuses("Quick one: " + p + " Thanks in advance.")
    hidden = independent_prompts("hidden")[0]  # a run of words lifted out of one
    assert held.refuses(" ".join(hidden.split()[1:8]) + " and other things")
    for ok in ("Tell me about volcanoes.", "Write a haiku about rain.", "hi",
               "How do I cook rice on a stove?"):
        assert not held.refuses(ok)


def test_a_shard_round_trips_and_the_manifest_counts_it(tmp_path):
    convs = [Conversation([1, 5, 7, 65535, 2], [(2, 5)], {"kind": "magpie", "greedy": True}),
             Conversation([1, 9, 2, 4, 4, 2], [(2, 3), (4, 6)], {"kind": "code", "greedy": False})]
    back = decode_shard(encode_shard(convs))
    assert [(c.ids, c.spans, c.meta) for c in back] == [(c.ids, c.spans, c.meta) for c in convs]
    corpus = Corpus(tmp_path / "c", {"seed": 3})
    corpus.append(convs, seed=11)
    corpus.append([], seed=12)  # an empty batch still takes its index
    again = Corpus(tmp_path / "c")
    assert [s["index"] for s in again.shards] == [0, 1]
    t = again.manifest["totals"]
    assert (t["conversations"], t["tokens"], t["assistant_tokens"], t["replies"]) == (2, 11, 6, 3)
    assert (t["greedy_replies"], t["sampled_replies"], t["kinds"]) == (1, 2, {"code": 1, "magpie": 1})
    assert [c.ids for c in again.conversations()] == [c.ids for c in convs]
    (tmp_path / "c" / again.shards[0]["file"]).write_bytes(encode_shard(convs[:1]))
    with pytest.raises(ValueError, match="checksum"):
        again.read(again.shards[0])
    with pytest.raises(ValueError, match="uint16"):
        encode_shard([Conversation([70000])])


class FakeTokenizer:
    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class FakeWriter(corpus_gen.TargetWriter):
    """Characters as tokens; the 'target' writes held-out prompts whenever it writes a user turn."""

    def __init__(self, user_texts):
        self.tok, self.end = FakeTokenizer(), 3
        self.record = corpus_gen.generation_record(torch.float32)
        self.user_texts = user_texts
        self.calls = 0

    def encode(self, text):
        return [ord(c) for c in text]

    def head(self, system):
        return self.encode(f"<s>{system}<u>")

    def generate(self, contexts, max_new, sample, temperature, top_p):
        out = []
        for _ in contexts:
            self.calls += 1
            text = self.user_texts[self.calls % len(self.user_texts)] if max_new == corpus_gen.USER_TOKENS \
                else "Sure, here is an answer with enough words to be kept around."
            out.append((self.encode(text) + [self.end], True))
        return out


@pytest.mark.parametrize("seed", range(6))
def test_the_generator_never_keeps_a_held_out_user_turn(seed):
    held = HeldOut()
    writer = FakeWriter(independent_prompts("hidden") + eval_prompts())
    convs, refused, plan = corpus_gen.build_batch(writer, held, random.Random(seed), [],
                                                  lambda p: 24)
    assert refused > 0
    for c in convs:
        assert c.meta["users"] and not any(held.refuses(u) for u in c.meta["users"])
        # the target-written ones were refused
        assert c.meta["kind"] in ("template", "material", "written")
        assert len(c.spans) >= 1
        assert len(c.spans) == len(c.meta["users"]) <= plan.turns


def test_conversations_follow_up_when_the_target_writes_allowed_turns():
    writer = FakeWriter(["Could you tell me more about that part?"])
    rng = random.Random(1)
    convs, refused, plan = corpus_gen.build_batch(writer, HeldOut(), rng, ["some text to edit"],
                                                  lambda p: 30)
    assert refused == 0 and len(convs) == 30
    assert max(len(c.spans) for c in convs) == plan.turns
    for c in convs:
        for (s, e), (s2, _) in zip(c.spans, c.spans[1:]):
            assert c.ids[e - 1] == writer.end and s2 > e  # a user turn between two replies


def test_a_resumed_corpus_records_from_which_shard_new_settings_apply(tmp_path):
    # a corpus begun before the generator was recorded: its shards were HF generate's, float32
    corpus = Corpus(tmp_path / "c", {"seed": 0, "batch": 32, "long_batch": 16})
    corpus.append([], seed=1)
    bf16 = corpus_gen.generation_record(torch.bfloat16)
    corpus_gen.note_change(corpus, "generator_changes", bf16, before=corpus_gen.LEGACY_GENERATION)
    corpus_gen.note_change(corpus, "generator_changes", bf16, before=corpus_gen.LEGACY_GENERATION)
    corpus_gen.note_change(corpus, "batch_changes", {"batch": 32, "long_batch": 16})
    corpus.append([], seed=2)
    fp32 = corpus_gen.generation_record(torch.float32)
    corpus_gen.note_change(corpus, "generator_changes", fp32, before=corpus_gen.LEGACY_GENERATION)
    corpus_gen.note_change(corpus, "batch_changes", {"batch": 24, "long_batch": 16})
    recipe = corpus.manifest["recipe"]
    assert bf16 == {"generator": corpus_gen.GENERATOR, "dtype": "bfloat16"}
    assert recipe["generator_changes"] == [{"from_shard": 1, **bf16}, {"from_shard": 2, **fp32}]
    assert recipe["batch_changes"] == [{"from_shard": 2, "batch": 24, "long_batch": 16}]
    # a corpus begun with them records no change until one happens
    args = argparse.Namespace(seed=0, batch=4, long_batch=2)
    fresh = Corpus(tmp_path / "d", corpus_gen.recipe_record(args, bf16))
    fresh.append([], seed=1)
    corpus_gen.note_change(fresh, "generator_changes", bf16, before=corpus_gen.LEGACY_GENERATION)
    assert "generator_changes" not in fresh.manifest["recipe"]
    assert fresh.manifest["recipe"]["dtype"] == "bfloat16"


def test_each_shard_records_its_generator_and_dtype(tmp_path):
    corpus = Corpus(tmp_path / "c", {"seed": 0})
    writer = FakeWriter(["Could you tell me more about that part?"])
    args = argparse.Namespace(seed=0, batch=4, long_batch=2)
    corpus_gen.grow_one(corpus, writer, HeldOut(), [], args, time.time())
    assert corpus.shards[0]["generator"] == corpus_gen.GENERATOR
    assert corpus.shards[0]["dtype"] == "float32"


def test_the_recipe_covers_its_kinds_and_is_seeded():
    rng = random.Random(0)
    kinds = {plan_opening(rng, ["x"]).kind for _ in range(2000)}
    assert kinds == set(OPENERS) | {"magpie", "material", "template", "written"}
    plans = [plan_batch(random.Random(5)) for _ in range(2)]
    assert plans[0] == plans[1]
    many = [plan_batch(random.Random(s)) for s in range(200)]
    assert {p.greedy for p in many} == {True, False}
    assert {p.max_new_tokens for p in many} == {128, 256, 512}
    assert corpus_gen.shard_seed(0, 4) != corpus_gen.shard_seed(0, 5)


def test_the_written_prompts_are_many_distinct_and_never_held_out():
    prompts = written_prompts()
    assert len(prompts) >= 400
    assert len({" ".join(normalise(p)) for p in prompts}) == len(prompts)  # no duplicates
    assert all(p.strip() == p and p for p in prompts)
    held = HeldOut()
    assert not [p for p in prompts if held.refuses(p)]
    assert written_prompts() is prompts  # loaded once


def test_about_15_percent_of_openings_are_written_and_seeded():
    openings = [plan_opening(random.Random(s), ["some earlier reply"]) for s in range(4000)]
    written = [o for o in openings if o.kind == "written"]
    assert 0.12 < len(written) / len(openings) < 0.18
    assert sum(o.kind == "magpie" for o in openings) / len(openings) == pytest.approx(0.30, abs=0.03)
    assert all(o.user and o.opener == "" for o in written)
    assert len({o.user for o in written}) > 200  # drawn across the file, some with a constraint
    assert any(o.user not in written_prompts() for o in written)
    assert [plan_opening(random.Random(7), ["x"]) for _ in range(3)] == \
        [plan_opening(random.Random(7), ["x"]) for _ in range(3)]
    rng_a, rng_b = random.Random(11), random.Random(11)
    assert [plan_opening(rng_a, []) for _ in range(300)] == [plan_opening(rng_b, []) for _ in range(300)]


def test_depth_rates_by_hand():
    # starts in [T T F T]: t0 runs 2 then fails at depth 3; t1 runs 1; t2 fails; t3 runs 1 (end)
    r = depth_rates([[True, True, False, True]], depths=3)
    assert r["positions"] == 4
    assert r["first"] == pytest.approx(3 / 4)
    assert r["conditional"] == pytest.approx([1 / 2, 0 / 1])  # depth 2: t0 yes, t1 no; t3 at end
    assert r["chain_tokens_per_pass"] == pytest.approx([1.75, 1.75 + 0.375, 1.75 + 0.375])


def test_strong_pair_copies_keep_or_change_the_target():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tools.draft.drafters import TargetCopy, keep_layers, round_weights

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    target = LlamaForCausalLM(cfg).eval()
    ids = list(range(1, 30))
    with torch.no_grad():
        ref = target(input_ids=torch.tensor([ids])).logits[0].argmax(-1)
    assert torch.equal(TargetCopy(target, keep_layers([0, 1, 2])).argmax(ids), ref)
    assert torch.equal(TargetCopy(target, round_weights(16, 32)).argmax(ids), ref)
    assert not torch.equal(TargetCopy(target, keep_layers([2])).argmax(ids), ref)
    assert len(target.model.layers) == 3  # the target itself untouched


def test_an_opener_and_the_targets_continuation_keep_the_space_between_them():
    writer = FakeWriter([" about the sea, with three verses please"])
    convs, _, _ = corpus_gen.build_batch(writer, HeldOut(), random.Random(3), [], lambda p: 40)
    steered = [c for c in convs if c.meta["kind"] in OPENERS]
    assert steered
    for c in steered:
        assert c.meta["users"][0].endswith(" about the sea, with three verses please")
        assert "  " not in c.meta["users"][0] and not c.meta["users"][0].startswith(" ")


def test_confidence_rates_by_hand():
    from tools.draft.measure import confidence_rates

    matches = [[True, False, True], [True, True]]
    p1 = [[0.95, 0.2, 0.6], [0.9, 0.25]]
    r = confidence_rates(matches, p1, edges=(0.5, 0.9))
    assert [b["positions"] for b in r] == [2, 1, 2]
    assert [b["first"] for b in r] == [pytest.approx(0.5), 1.0, 1.0]
    assert (r[0]["target_p1_from"], r[-1]["target_p1_to"]) == (0.0, 1.0)
    assert confidence_rates([[]], [[]])[0] == {"target_p1_from": 0.0, "target_p1_to": 0.3,
                                               "positions": 0, "first": None}
