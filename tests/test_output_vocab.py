"""A draft with a partial output vocabulary (weights.OUTPUT_IDS): it scores only the listed
ids, every other id gets probability 0, and speculative decoding stays exact."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import specdec
from helpers.distribution import exact_two_token_distribution, pvalue, sample_two_tokens
from helpers.models import make_noised_copy, make_tiny_model, sharpen_lm_head, write_borrowing_draft
from specdec.weights import OUTPUT_IDS

PROMPT = [3, 17, 42, 8, 61, 5]


def target_alone(path, n=40):
    return specdec.load(path, dtype="float32").generate(PROMPT, max_new_tokens=n).token_ids


def restrict_output(src, dst, ids, tie: bool = False):
    """Copy a saved tiny model, keeping only the output rows of `ids` (tied: drop lm_head
    and score with the embedding rows instead)."""
    import shutil

    shutil.copytree(src, dst)
    state = load_file(f"{dst}/model.safetensors")
    ids = torch.tensor(sorted(ids), dtype=torch.int32)
    if tie:
        state.pop("lm_head.weight", None)
        config = json.loads((dst / "config.json").read_text())
        config["tie_word_embeddings"] = True
        (dst / "config.json").write_text(json.dumps(config))
    else:
        state["lm_head.weight"] = state["lm_head.weight"][ids.long()].contiguous()
    state[OUTPUT_IDS] = ids
    save_file(state, f"{dst}/model.safetensors", metadata={"format": "pt"})
    return dst


def _logits(path, tokens):
    model = specdec.load(path, dtype="float32").target.model
    return model.forward(torch.tensor(tokens), torch.arange(len(tokens)), model.new_cache(32))


@pytest.mark.parametrize("tie", [False, True])
def test_partial_vocabulary_scores_its_ids_and_nothing_else(tmp_path, tie):
    full = make_tiny_model(tmp_path / "full", "llama", tie_word_embeddings=tie)
    ids = list(range(0, 96, 3)) + [95]
    restrict_output(tmp_path / "full", tmp_path / "part", ids, tie=tie)
    got = _logits(tmp_path / "part", PROMPT)
    with torch.no_grad():
        want = full(torch.tensor([PROMPT])).logits[0]  # transformers, the whole vocabulary
    inside = torch.zeros(96, dtype=torch.bool)
    inside[ids] = True
    assert got.shape == want.shape
    torch.testing.assert_close(got[:, inside], want[:, inside], atol=1e-4, rtol=1e-4)
    assert torch.isneginf(got[:, ~inside]).all()


@pytest.mark.parametrize("speculation", ["chain", "tree"])
def test_greedy_with_partial_vocabulary_draft_equals_target_alone(tmp_path, speculation):
    target = tmp_path / "target"
    make_tiny_model(target, "llama", eos_token_id=None)
    sharpen_lm_head(target, 8.0)
    expected = target_alone(target)
    make_noised_copy(target, tmp_path / "noised", scale=0.3)
    # The draft lacks every third id, so some of the target's choices are ones it cannot propose.
    keep = [i for i in range(96) if i % 3]
    draft = restrict_output(tmp_path / "noised", tmp_path / "draft", keep)
    assert any(t not in keep for t in expected)
    lm = specdec.load(target, draft=draft, dtype="float32", speculation=speculation,
                      k=4 if speculation == "chain" else None, tree_nodes=8)
    out = lm.generate(PROMPT, max_new_tokens=40)
    assert out.token_ids == expected
    assert out.stats.accepted > 0


# Chain only: the draft's probabilities enter rejection sampling there (a tree's walk never
# reads them); the rule with a draft missing tokens is also checked on its own
# (test_acceptance_distribution.py).
@pytest.mark.slow
def test_sampling_with_partial_vocabulary_draft_follows_the_target(tmp_path, speculation="chain"):
    from specdec.sampling import SamplingParams

    target = tmp_path / "t"
    make_tiny_model(target, "llama", vocab_size=16, eos_token_id=None)
    sharpen_lm_head(target, 20.0)
    make_noised_copy(target, tmp_path / "noised", scale=0.3)
    exact = exact_two_token_distribution(target, SamplingParams(temperature=1.0))
    # Drop the target's two likeliest first tokens from the draft: only the residual
    # distribution of rejection sampling can emit them.
    first = exact.view(16, 16).sum(1)
    dropped = first.topk(2).indices.tolist()
    draft = restrict_output(tmp_path / "noised", tmp_path / "d", [i for i in range(16) if i not in dropped])
    lm = specdec.load(target, draft=draft, dtype="float32", k=3, speculation=speculation, tree_nodes=6)
    n = 2000
    counts, totals = sample_two_tokens(lm, n, temperature=1.0)
    assert totals["accepted"] > 0
    assert counts.view(16, 16)[dropped].sum() > 0.2 * n  # the dropped ids really were emitted
    assert pvalue(counts, exact) > 1e-3


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([5, 3, 9], dtype=torch.int32), "ascending"),
    (torch.tensor([1, 2, 96], dtype=torch.int32), "in \\[0, 96\\)"),
    (torch.tensor([1.0, 2.0, 3.0]), "integer token ids"),
    (torch.zeros(2, 2, dtype=torch.int32), "shape"),
])
def test_damaged_output_ids_are_refused_clearly(tmp_path, ids, message):
    make_tiny_model(tmp_path / "t", "llama")
    state = load_file(f"{tmp_path}/t/model.safetensors")
    state[OUTPUT_IDS] = ids
    state["lm_head.weight"] = state["lm_head.weight"][: max(ids.shape[0], 1)].contiguous()
    save_file(state, f"{tmp_path}/t/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=message):
        specdec.load(tmp_path / "t", dtype="float32")


def test_output_rows_that_disagree_with_the_ids_are_refused(tmp_path):
    make_tiny_model(tmp_path / "t", "llama")
    state = load_file(f"{tmp_path}/t/model.safetensors")
    state[OUTPUT_IDS] = torch.arange(10, dtype=torch.int32)  # but lm_head keeps all 96 rows
    save_file(state, f"{tmp_path}/t/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lm_head.weight has shape \\(96, 64\\).*implies \\(10, 64\\)"):
        specdec.load(tmp_path / "t", dtype="float32")


def test_memory_plan_counts_the_copied_output_rows(tmp_path):
    from specdec.loading import open_model
    from specdec.memory_plan import draft_bytes as _draft_bytes

    make_tiny_model(tmp_path / "full", "llama")
    restrict_output(tmp_path / "full", tmp_path / "tied", range(10), tie=True)
    restrict_output(tmp_path / "full", tmp_path / "untied", range(10), tie=False)
    for name in ("tied", "untied"):
        path = tmp_path / name
        loaded = specdec.load(path, dtype="float32").target
        model = loaded.model
        real = sum(t.nbytes for t in model.weights.resident.values() if t.is_floating_point())
        real += sum(t.nbytes for layer in model.weights.layers() for t in layer.values())
        if name == "tied":
            real += model.head.nbytes  # the rows copied out of the table
        assert _draft_bytes(open_model(path), torch.float32) == real, name


def test_accelerate_baseline_export_keeps_the_draft_s_choices(tmp_path):
    """bench offload hands transformers a full-size copy of a partial-vocabulary draft:
    the listed ids score as in specdec, and at temperature 0 it picks the same tokens."""
    from transformers import AutoModelForCausalLM

    from specdec.bench.hf import export_assistant_hf
    from specdec.loading import DRAFT_SIDECAR

    make_tiny_model(tmp_path / "target", "llama", tie_word_embeddings=True)
    ids = list(range(40, 96))
    draft = restrict_output(tmp_path / "target", tmp_path / "draft", ids, tie=True)
    state = load_file(f"{draft}/model.safetensors")
    del state["model.embed_tokens.weight"]  # borrowed from the target at load time
    save_file(state, f"{draft}/model.safetensors", metadata={"format": "pt"})
    (draft / DRAFT_SIDECAR).write_text(json.dumps({"embeddings_from_target": True}))

    exported = export_assistant_hf(draft, tmp_path / "target", tmp_path / "hf_draft")
    hf = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor([PROMPT])).logits[0]
    lm = specdec.load(tmp_path / "target", draft=draft, dtype="float32")
    ours = lm.draft.model.forward(torch.tensor(PROMPT), torch.arange(len(PROMPT)), lm.draft.model.new_cache(32))
    # bf16 export: close, not equal
    torch.testing.assert_close(theirs[:, ids], ours[:, ids], atol=0.05, rtol=0.05)
    assert (theirs[:, :40] == 0).all()


def _borrowing_draft(tmp_path, ids):
    """An untied draft (the target's layers) that borrows embeddings and lm_head from the
    target and scores only `ids`."""
    make_tiny_model(tmp_path / "target", "llama")
    return tmp_path / "target", write_borrowing_draft(tmp_path / "target", tmp_path / "draft", ids)


def test_borrowed_untied_head_keeps_only_the_listed_rows(tmp_path):
    ids = [0, 7, 8, 50, 95]
    target, draft = _borrowing_draft(tmp_path, ids)
    lm = specdec.load(target, draft=draft, dtype="float32")
    want = lm.target.model.forward(torch.tensor(PROMPT), torch.arange(len(PROMPT)), lm.target.model.new_cache(32))
    got = lm.draft.model.forward(torch.tensor(PROMPT), torch.arange(len(PROMPT)), lm.draft.model.new_cache(32))
    torch.testing.assert_close(got[:, ids], want[:, ids])
    assert torch.isneginf(got).sum() == got.shape[0] * (96 - len(ids))


def test_borrowed_untied_head_with_bad_ids_is_refused_clearly(tmp_path):
    target, draft = _borrowing_draft(tmp_path, [3, 200])
    with pytest.raises(ValueError, match="in \\[0, 96\\)"):
        specdec.load(target, draft=draft, dtype="float32")
