"""Distilling from the broad corpus (tools/draft/labels.py, distil_corpus.py): the labels are
the target's own top-k at the right positions, and a run stopped at a checkpoint and resumed
ends where an unbroken run does."""
from __future__ import annotations

from argparse import Namespace

import pytest
import torch

from tools.draft.corpus_shards import Conversation
from tools.draft.distil import OutputVocab, build_draft
from tools.draft.distil_corpus import Run, held_out, make_batch, replies_only
from tools.draft.grow import grow_draft, layer_plan, parse_grow, target_layers
from tools.draft.labels import label_conversations, target_positions


@pytest.fixture(scope="module")
def target():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def conversations(n: int, seed: int) -> list[Conversation]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(12, 40, (1,), generator=g))
        ids = torch.randint(3, 96, (length,), generator=g).tolist()
        out.append(Conversation(ids, [(4, 9), (12, length)]))
    return out


def test_labels_are_the_targets_top_k_at_each_assistant_position(target):
    convs = conversations(5, 1)
    examples = label_conversations(target, convs, all_positions=False, batch_tokens=64)
    for c, e in zip(convs, examples):
        assert e.targets.tolist() == target_positions(c, False)
        assert e.ids.tolist() == c.ids
        with torch.no_grad():
            logits = target(input_ids=torch.tensor([c.ids])).logits[0]
        ref_v, ref_i = logits[e.targets - 1].topk(16, -1)
        assert torch.equal(e.top_i[:, 0].long(), ref_i[:, 0])
        assert torch.allclose(e.top_v.float(), ref_v, rtol=1e-2, atol=1e-2)
    assert target_positions(convs[0], True) == list(range(1, len(convs[0].ids)))


def test_the_held_out_split_depends_on_the_conversation_only(target):
    examples = label_conversations(target, conversations(40, 2), all_positions=False)
    first = [held_out(e, 4) for e in examples]
    assert first == [held_out(e, 4) for e in reversed(examples)][::-1]
    assert 0 < sum(first) < len(first)


def test_held_out_agreement_counts_assistant_positions_even_when_training_on_all(target):
    convs = conversations(3, 4)
    everywhere = label_conversations(target, convs, all_positions=True, batch_tokens=64)
    replies = label_conversations(target, convs, all_positions=False, batch_tokens=64)
    for c, a, r in zip(convs, everywhere, replies):
        kept = replies_only(a, c)
        assert len(a.targets) > len(kept.targets)
        assert kept.targets.tolist() == r.targets.tolist() == target_positions(c, False)
        assert torch.equal(kept.top_i, r.top_i) and torch.equal(kept.ids, a.ids)
        assert held_out(kept, 3) == held_out(a, 3)


def _run(target, examples):
    torch.manual_seed(0)
    draft = build_draft(target, [0, 3])
    vocab = OutputVocab(torch.arange(96), 96)
    args = Namespace(lr=1e-3, warmup=2, steps=6, batch_tokens=60, hard_weight=1.0, seed=0)
    return Run(args, draft, vocab)


def test_a_resumed_run_ends_where_an_unbroken_one_does(target, tmp_path):
    examples = label_conversations(target, conversations(12, 3), all_positions=False)
    whole = _run(target, examples)
    for _ in range(6):
        whole.train_step(examples)
    first = _run(target, examples)
    for _ in range(3):
        first.train_step(examples)
    first.save(tmp_path / "ckpt.pt")
    second = _run(target, examples)
    second.restore(tmp_path / "ckpt.pt")
    assert second.step == 3
    for _ in range(3):
        second.train_step(examples)
    for (k, a), b in zip(whole.draft.state_dict().items(), second.draft.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    inp, rows, cols, tv, ti = make_batch(examples[:2])
    assert len(rows) == len(cols) == len(tv) == sum(len(e.targets) for e in examples[:2])


def test_float32_training_matches_bf16_closely_and_bad_precision_is_refused(target):
    from tools.draft.distil import compute_dtype, draft_loss

    assert compute_dtype("fp32") == torch.float32 and compute_dtype("bf16") == torch.bfloat16
    assert compute_dtype("auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        compute_dtype("fp16")
    examples = label_conversations(target, conversations(4, 5), all_positions=False)
    run = _run(target, examples)
    batch = make_batch(examples)
    full, _ = draft_loss(run.draft, run.vocab, batch, 1.0, torch.float32)
    half, _ = draft_loss(run.draft, run.vocab, batch, 1.0, torch.bfloat16)
    assert torch.isfinite(full) and abs(full.item() - half.item()) < 0.05 * full.item()
    assert full.item() != half.item()  # the float32 path really skips the autocast


def test_a_mixed_anchored_run_resumes_exactly_and_draws_from_each_source(target, tmp_path):
    corpus = label_conversations(target, conversations(10, 6), all_positions=False)
    offline = label_conversations(target, conversations(10, 7), all_positions=False)
    mix = [(0.5, offline)]

    def run():
        torch.manual_seed(0)
        args = Namespace(lr=1e-3, warmup=2, steps=8, batch_tokens=60, hard_weight=1.0, seed=0,
                         anchor_weight=0.5, anchor_kl=0.5, precision="fp32")
        return Run(args, build_draft(target, [0, 3]), OutputVocab(torch.arange(96), 96))

    whole = run()
    drawn = [whole.next_batch(corpus, mix)[0] for _ in range(20)]
    source = [any(e is x for x in offline) for e in drawn]
    assert any(source) and not all(source)
    whole = run()
    for _ in range(8):
        whole.train_step(corpus, mix)
    first = run()
    for _ in range(4):
        first.train_step(corpus, mix)
    first.save(tmp_path / "ckpt.pt")
    second = run()
    second.restore(tmp_path / "ckpt.pt")
    for _ in range(4):
        second.train_step(corpus, mix)
    for (k, a), b in zip(whole.draft.state_dict().items(), second.draft.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    moved = sum(((p - p0) ** 2).sum() for p, p0 in zip(whole.params, whole.anchor))
    assert 0 < moved.item()
    # the KL anchor's reference stayed the warm start, in the unbroken run and the resumed one
    fresh = build_draft(target, [0, 3])
    for ref in (whole.reference, second.reference):
        for (k, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), k
    # the best held-out agreement writes a draft whose sidecar names the mix and the anchor
    import json

    from tools.draft.corpus_shards import Corpus
    from tools.draft.distil_corpus import evaluate

    whole.args = Namespace(**vars(whole.args), init_from=None, init_layers="0,3", data="c",
                           all_positions=False, mix=["o:l:0.5"], out=str(tmp_path / "draft"))
    whole.mix_info = [{"source": "o:l:0.5", "share": 0.5, "positions": 1}]
    evaluate(whole, corpus[:3], [1.0], whole.args, Corpus(tmp_path / "none"), 10)
    meta = json.loads((tmp_path / "draft" / "specdec_draft.json").read_text())
    assert meta["mix"] == whole.mix_info and meta["anchor"].startswith("0.5 x")
    assert meta["anchor_kl"].startswith("0.5 x KL")


def test_the_kl_anchor_is_zero_at_the_warm_start_and_grows_as_the_draft_moves(target):
    from tools.draft.distil import draft_loss_logits
    from tools.draft.distil_corpus import kl_to_reference

    examples = label_conversations(target, conversations(6, 8), all_positions=False)
    torch.manual_seed(0)
    args = Namespace(lr=1e-2, warmup=1, steps=4, batch_tokens=60, hard_weight=1.0, seed=0,
                     anchor_kl=1.0, precision="fp32")
    run = Run(args, build_draft(target, [0, 3]), OutputVocab(torch.arange(96), 96))
    batch = make_batch(examples)

    def kl():
        _, _, logits = draft_loss_logits(run.draft, run.vocab, batch, 1.0, torch.float32)
        return kl_to_reference(run.reference, run.vocab, batch, logits, torch.float32).item()

    assert abs(kl()) < 1e-6
    for _ in range(4):
        run.train_step(examples)
    assert kl() > 1e-4
    assert not any(p.requires_grad for p in run.reference.parameters())


# Growing a trained draft (tools/draft/grow.py): the inserted layers start as the identity, so the
# grown draft's logits equal the trained draft's, and they learn from the first step.
def test_the_plan_puts_new_layers_after_the_named_draft_layers():
    assert layer_plan(3, 8, [(-1, 5), (0, 2), (2, 7), (0, 3)]) == [
        ("target", 5), ("draft", 0), ("target", 2), ("target", 3), ("draft", 1), ("draft", 2),
        ("target", 7)]
    assert target_layers([0, 4, 7], parse_grow("0:2,1:5")) == [0, 2, 4, 5, 7]
    assert parse_grow(None) == [] and parse_grow("") == []


@pytest.mark.parametrize("spec, message", [("0-2", "AFTER:TARGET_LAYER"), ("2:1", "draft has layers 0..1"),
                                           ("0:9", "target has layers 0..3")])
def test_a_bad_grow_spec_names_the_problem(target, spec, message):
    with pytest.raises(SystemExit, match=message):
        grow_draft(build_draft(target, [0, 3]), target, parse_grow(spec))


def test_a_grown_draft_computes_what_the_trained_draft_computes(target):
    draft = build_draft(target, [0, 3])
    with torch.no_grad():  # move the draft off its target copy, as training would
        for p in draft.model.layers.parameters():
            p.add_(0.01 * torch.randn_like(p))
    grown = grow_draft(draft, target, parse_grow("-1:1,0:2"))
    assert grown.config.num_hidden_layers == 4 and draft.config.num_hidden_layers == 2
    ids = torch.randint(3, 96, (2, 17), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(grown(input_ids=ids).logits, draft(input_ids=ids).logits, atol=1e-5)
    # the trained layers kept their weights, the new ones are the target's but for the outputs
    assert torch.equal(grown.model.layers[1].mlp.up_proj.weight, draft.model.layers[0].mlp.up_proj.weight)
    assert torch.equal(grown.model.layers[2].self_attn.q_proj.weight,
                       target.model.layers[2].self_attn.q_proj.weight)
    assert not grown.model.layers[2].mlp.down_proj.weight.any()
    assert not grown.model.embed_tokens.weight.requires_grad


def test_the_new_layers_learn_from_the_first_step(target):
    examples = label_conversations(target, conversations(6, 9), all_positions=False)
    torch.manual_seed(0)
    args = Namespace(lr=1e-2, warmup=1, steps=2, batch_tokens=60, hard_weight=1.0, seed=0,
                     precision="fp32")
    run = Run(args, grow_draft(build_draft(target, [0, 3]), target, parse_grow("0:1")),
              OutputVocab(torch.arange(96), 96))
    run.train_step(examples)
    new = run.draft.model.layers[1]
    assert new.self_attn.o_proj.weight.abs().sum() > 0 and new.mlp.down_proj.weight.abs().sum() > 0


def test_a_warm_start_names_its_own_target_layers(tmp_path):
    import json

    from tools.draft.distil_corpus import DEFAULT_INIT_LAYERS, resolve_init_layers

    grown = [0, 2, 4, 8, 10, 12, 16, 18, 20, 24, 26, 29]
    (tmp_path / "specdec_draft.json").write_text(json.dumps({"init_from_target_layers": grown}))
    assert resolve_init_layers(None, str(tmp_path)) == ",".join(map(str, grown))
    assert resolve_init_layers(None, None) == DEFAULT_INIT_LAYERS
    assert resolve_init_layers(None, str(tmp_path / "no_sidecar")) == DEFAULT_INIT_LAYERS
    assert resolve_init_layers("1,3,5,7,9,11,13,15,17,19,21,23", str(tmp_path)).startswith("1,3")
    with pytest.raises(SystemExit, match="names 8 layers but the warm start .* has 12"):
        resolve_init_layers(DEFAULT_INIT_LAYERS, str(tmp_path))


def test_length_batches_cover_every_sequence_once_and_pad_little():
    import math
    import random

    from tools.draft.distil import length_batches

    # corpus-like lengths, 40 to 1,100 tokens; a batch that carried one chunk's longest
    # sequences into the next chunk's shortest padded to ~60K tokens here (8x the corpus's)
    r = random.Random(0)
    lengths = [int(math.exp(r.uniform(math.log(40), math.log(1100)))) for _ in range(2000)]
    for seed in range(3):
        out = length_batches(lengths, 4096, random.Random(seed))
        assert sorted(j for b in out for j in b) == list(range(len(lengths)))
        padded = [len(b) * max(lengths[j] for j in b) for b in out]
        assert max(padded) < 2 * 4096
        assert sum(padded) < 1.15 * sum(lengths)
    assert length_batches(lengths, 4096, random.Random(5)) == length_batches(lengths, 4096, random.Random(5))
