"""What proposes the tokens the target verifies: the Draft sum type.

A draft is one of: a model (a path, or a checkpoint already opened), the target's own
4-bit self-copy ("self", specdec/self_draft.py), or prompt lookup ("lookup": no model, the
context's own n-grams, specdec/lookup.py); no draft at all is plain decoding. Each kind
says which speculation modes it drives (speculate/registry.py), how much RAM it takes
beside a streamed target, and how its model is built; session.load runs the same steps
for every kind. A new kind is a Draft subclass and one line in DRAFT_KINDS.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from offload.budget import MemoryPlan

from . import self_draft
from .families import build_model
from .loading import LoadedModel, OpenedModel, load_resident, open_model
from .memory_plan import kv_per_token, runtime_bytes, streaming_plan
from .weights import ResidentWeights


class Draft:
    """A kind of draft. `modes`: the speculation modes it drives, the default first."""
    modes: tuple[str, ...] = ()

    def describe(self) -> str:
        """How the user named it, for error messages."""
        raise NotImplementedError

    def label(self, model: LoadedModel) -> str:
        """How the banner names this draft's loaded `model`: its path."""
        return str(model.path)

    def info(self, model: LoadedModel | None, plan: MemoryPlan | None) -> dict | None:
        """What `info --json` says the draft is: the banner's label, and its facts (None: no
        draft model, plain decoding)."""
        if model is None:
            return None
        return {"kind": "model", "path": str(model.path), "label": self.label(model)}

    def opened(self) -> "Draft":
        """This draft with its sources opened (configs read once); no weights read."""
        return self

    def check_store(self, store) -> None:
        """Refuse a streamed target this kind cannot draft for (the error says what instead)."""

    def plan(self, store, args, ram, dtype: torch.dtype, max_context: int) -> MemoryPlan:
        """The memory plan for streaming `store` beside this draft under `ram`."""
        return streaming_plan(store, args, None, ram, dtype, max_context)

    def resident_model(self, target: LoadedModel, dtype: torch.dtype) -> LoadedModel | None:
        """The draft model beside a target held whole in RAM (None: it drafts without one)."""
        return None

    def streamed_model(self, target: LoadedModel, store, weights, plan: MemoryPlan,
                       dtype: torch.dtype, cache_dir=None, progress: bool = True
                       ) -> LoadedModel | None:
        """The draft model beside a target streamed from `store` through `weights`."""
        return None


@dataclass(frozen=True)
class ModelDraft(Draft):
    """A separate, smaller model of the target's family: a directory, .gguf or store."""
    source: Path | OpenedModel
    modes = ("chain", "tree", "overlap")

    def describe(self) -> str:
        return f"draft {self.path}"

    @property
    def path(self) -> Path:
        return self.source.path if isinstance(self.source, OpenedModel) else self.source

    def opened(self) -> "ModelDraft":
        return self if isinstance(self.source, OpenedModel) else ModelDraft(open_model(self.source))

    def plan(self, store, args, ram, dtype, max_context):
        return streaming_plan(store, args, self.opened().source, ram, dtype, max_context)

    def resident_model(self, target, dtype):
        return load_resident(self.opened().source, dtype, embeddings_from=target,
                             kernels=target.model.kernels)

    def streamed_model(self, target, store, weights, plan, dtype, cache_dir=None, progress=True):
        return self.resident_model(target, dtype)


@dataclass(frozen=True)
class SelfDraft(Draft):
    """The target drafts for itself: 4-bit substitutes of its streamed layers in RAM, its
    pinned layers shared (specdec/self_draft.py)."""
    modes = ("chain", "tree", "overlap")

    def describe(self) -> str:
        return "draft='self'"

    def label(self, model: LoadedModel) -> str:
        # its path is the target's: the description says which layers it copies, and how
        return model.description

    def info(self, model, plan):
        # no path of its own (its model carries the target's): what it copies, and how
        return {"kind": "self", "label": self.label(model),
                **self_draft.layer_facts(plan, model.args.num_layers)}

    def check_store(self, store) -> None:
        self_draft.check_target(store)

    def plan(self, store, args, ram, dtype, max_context):
        return self_draft.plan_self_draft(store, ram, kv_per_token(args, dtype), max_context,
                                          runtime_bytes(store, dtype))

    def resident_model(self, target, dtype):
        weights = target.model.weights
        layers = self_draft.resident_self_draft_layers(list(weights.layers()))
        return _self_copy(target, ResidentWeights(weights.resident, layers, dtype),
                          self_draft.describe(None, target.args.num_layers))

    def streamed_model(self, target, store, weights, plan, dtype, cache_dir=None, progress=True):
        layers = self_draft.streamed_self_draft_layers(store, weights.pinned_tensors, cache_dir,
                                                       progress)
        return _self_copy(target, ResidentWeights(weights.resident, layers, dtype),
                          self_draft.describe(plan, target.args.num_layers))


def _self_copy(target: LoadedModel, weights, description: str) -> LoadedModel:
    """The target's own config and tokenizer over the self-draft's weights."""
    model = build_model(target.args, weights, target.model.dtype, target.model.kernels)
    return LoadedModel(target.path, target.args, model, target.config, target.generation_config,
                       target.tokenizer_source, description)


@dataclass(frozen=True)
class LookupDraft(Draft):
    """No draft model: continuations of the context's own n-grams (specdec/lookup.py), for
    replies that quote, rewrite or edit their prompt."""
    modes = ("lookup",)

    def describe(self) -> str:
        return "draft='lookup'"

    def info(self, model, plan):
        return {"kind": "lookup"}  # no model: continuations of the context's own n-grams


# Drafts named by a word instead of a model's path (`--draft self`, draft="lookup").
DRAFT_KINDS: dict[str, type[Draft]] = {
    "self": SelfDraft,
    "lookup": LookupDraft,
}


def parse_draft(value) -> Draft | None:
    """A Draft from what load() and the commands accept: None (plain decoding), a Draft, a
    kind's name, an opened checkpoint, or a model's path."""
    if value is None or isinstance(value, Draft):
        return value
    if isinstance(value, str) and value in DRAFT_KINDS:
        return DRAFT_KINDS[value]()
    if isinstance(value, OpenedModel):
        return ModelDraft(value)
    if isinstance(value, (str, Path)):
        return ModelDraft(Path(value).expanduser())
    raise TypeError(f"draft must be a model's path, one of {', '.join(map(repr, DRAFT_KINDS))}, "
                    f"or None (plain decoding), got {type(value).__name__}")
