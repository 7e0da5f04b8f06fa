"""A new speculation mode or draft kind is one class and one registry line: load(), the
settings checks and the decoder take it with nothing else changed (docs/architecture.md,
"Adding a speculation mode or a draft kind")."""
import pytest

import specdec
from helpers.models import make_tiny_model
from specdec.drafts import DRAFT_KINDS, Draft, LookupDraft, ModelDraft, SelfDraft, parse_draft
from specdec.load_settings import LoadSettings
from specdec.loading import load_resident
from specdec.speculate import registry
from specdec.speculate.plain import Plain

PROMPT = [3, 17, 42, 8, 61, 5]


class EveryOther(Plain):
    """A toy mode: plain decoding that counts its passes (what a new module would hold)."""
    name = "every-other"

    def __init__(self):
        self.passes = 0

    def commit(self, step, plan, logits, pass_seconds):
        self.passes += 1
        return super().commit(step, plan, logits, pass_seconds)


class TargetCopy(Draft):
    """A toy draft kind: the target loaded a second time drafts for itself."""
    modes = ("chain", "tree")

    def describe(self):
        return "draft='copy'"

    def resident_model(self, target, dtype):
        return load_resident(target.path, dtype)


@pytest.fixture
def tiny(tmp_path):
    make_tiny_model(tmp_path, "llama", eos_token_id=None)
    return tmp_path


def test_a_new_mode_is_one_registry_line(tiny, monkeypatch):
    monkeypatch.setitem(registry.MODES, "every-other",
                        registry.Mode(lambda inputs: EveryOther(), needs_model=False))
    expected = specdec.load(tiny, dtype="float32").generate(PROMPT, max_new_tokens=5).token_ids
    lm = specdec.load(tiny, dtype="float32", speculation="every-other")
    assert isinstance(lm.engine.strategy, EveryOther)
    assert lm.generate(PROMPT, max_new_tokens=5).token_ids == expected
    assert lm.engine.strategy.passes == 5
    with pytest.raises(ValueError, match="speculation must be one of"):
        specdec.load(tiny, dtype="float32", speculation="every-third")


def test_a_new_draft_kind_is_one_registry_line(tiny, monkeypatch):
    monkeypatch.setitem(DRAFT_KINDS, "copy", TargetCopy)
    expected = specdec.load(tiny, dtype="float32").generate(PROMPT, max_new_tokens=8).token_ids
    lm = specdec.load(tiny, draft="copy", dtype="float32", k=3)
    out = lm.generate(PROMPT, max_new_tokens=8)
    assert out.token_ids == expected
    assert out.stats.drafted > 0 and out.stats.accepted == out.stats.drafted  # it is the target
    with pytest.raises(ValueError, match="speculation='lookup' drafts from the context.*draft='copy'"):
        specdec.load(tiny, draft="copy", speculation="lookup")


def test_drafts_parse_from_what_load_accepts(tmp_path):
    assert parse_draft(None) is None
    assert parse_draft("self") == SelfDraft() and parse_draft("lookup") == LookupDraft()
    assert parse_draft(tmp_path) == ModelDraft(tmp_path)
    assert parse_draft(str(tmp_path)) == ModelDraft(tmp_path)
    with pytest.raises(TypeError, match="draft must be a model's path"):
        parse_draft(3)


def test_each_draft_kind_resolves_its_own_default_mode(tmp_path):
    mode = lambda **kw: LoadSettings(target=tmp_path, **kw).resolved_speculation().mode  # noqa: E731
    assert mode() == "chain" and mode(draft=tmp_path) == "chain"
    assert mode(draft="lookup") == "lookup" and mode(draft="lookup", speculation="chain") == "lookup"
    assert mode(draft="self", speculation="tree") == "tree"
    assert mode(speculation="lookup") == "lookup"  # a model-free mode needs no draft
    tree = LoadSettings(target=tmp_path, draft=tmp_path, speculation="tree").resolved_speculation()
    assert tree.lookup_branches == registry.DEFAULT_LOOKUP_BRANCHES
