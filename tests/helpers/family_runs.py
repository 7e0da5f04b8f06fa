"""Running the tiny family models (helpers/family_models.py) both ways: specdec's model built
from a checkpoint, transformers' logits and greedy generate, and a sharpened target with a
noised copy as its draft. Shared by the dense and mixture-of-experts family tests."""
from __future__ import annotations

import dataclasses

import torch

from helpers.family_models import make_family_model
from helpers.models import make_noised_copy, sharpen_lm_head

PROMPT = [3, 17, 42, 8, 61, 5]


def our_model(path, dtype=torch.float32, **changes):
    """specdec's model of the checkpoint at `path`, in RAM; `changes` override ModelArgs fields
    (to switch a variant flag off)."""
    from offload.checkpoint import open_checkpoint
    from specdec.config import ModelArgs
    from specdec.families import build_model
    from specdec.weights import ResidentWeights

    ckpt = open_checkpoint(path)
    args = dataclasses.replace(ModelArgs.from_hf(ckpt.config), **changes)
    return build_model(args, ResidentWeights.from_state_dict(ckpt.state_dict(), args, dtype), dtype)


def reference_logits(ref, ids):
    """transformers' logits for one sequence of token ids."""
    with torch.no_grad():
        return ref(ids[None]).logits[0]


def make_target_and_draft(tmp_path, variant, **overrides):
    """A target with peaked distributions and a noised copy of it as draft (they agree often);
    returns (target dir, draft dir)."""
    target, draft = tmp_path / "t", tmp_path / "d"
    make_family_model(target, variant, eos_token_id=None, tie_word_embeddings=False, **overrides)
    sharpen_lm_head(target, 8.0)
    make_noised_copy(target, draft, scale=0.1)
    return target, draft


def target_and_draft(tmp_path, variant, **overrides):
    """make_target_and_draft, with transformers' model of the target first:
    (reference, target dir, draft dir)."""
    from transformers import AutoModelForCausalLM

    target, draft = make_target_and_draft(tmp_path, variant, **overrides)
    ref = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
    return ref, target, draft


def hf_greedy(ref, n):
    """transformers' greedy continuation of PROMPT, `n` tokens, no EOS."""
    with torch.no_grad():
        out = ref.generate(torch.tensor([PROMPT]), max_new_tokens=n, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()
