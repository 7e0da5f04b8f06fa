"""Drafts to measure against the demo target, each as next-token argmaxes over a sequence:
the shipped (or any tools.draft-trained) draft, a layer-skipped copy of the target, and the
target with its linear weights rounded to few bits (the last two are "strong pair" stand-ins:
copies of the target itself, so they agree with it far more than a small trained draft)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from .distil import OutputVocab, build_draft


class TrainedDraft:
    """A draft directory written by tools.draft (layers, norm, its output ids), with the
    target's embedding table, as the runtime loads it."""

    def __init__(self, target, directory: Path):
        from safetensors.torch import load_file

        from specdec.weights import OUTPUT_IDS

        cfg = json.loads((directory / "config.json").read_text())
        side = directory / "specdec_draft.json"
        layers = json.loads(side.read_text()).get("init_from_target_layers") if side.exists() else None
        layers = layers or list(range(cfg["num_hidden_layers"]))
        self.model = build_draft(target, layers, directory).eval()
        ids = load_file(str(directory / "model.safetensors")).get(OUTPUT_IDS)
        vocab = cfg["vocab_size"]
        self.vocab = OutputVocab(ids.long() if ids is not None else torch.arange(vocab), vocab)

    @torch.no_grad()
    def argmax(self, ids: list[int]) -> torch.Tensor:
        h = self.model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        return self.vocab.ids[self.vocab.logits(self.model, h).argmax(-1)]


class TargetCopy:
    """The target, changed by `edit` (a function of a deep copy)."""

    def __init__(self, target, edit):
        self.model = copy.deepcopy(target).eval()
        edit(self.model)

    @torch.no_grad()
    def argmax(self, ids: list[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([ids])).logits[0].argmax(-1)


def keep_layers(layers: list[int]):
    def edit(model):
        n = len(model.model.layers)
        if not layers or any(i < 0 or i >= n for i in layers):
            raise SystemExit(f"skip:{layers}: layer indices must be in 0..{n - 1}")
        model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in layers])
        for j, layer in enumerate(model.model.layers):  # the KV cache is indexed by position
            layer.self_attn.layer_idx = j
        model.config.num_hidden_layers = len(layers)
    return edit


def rtn(w: torch.Tensor, bits: int, group: int, name: str = "weight") -> torch.Tensor:
    """`w` [out, in] rounded to nearest, asymmetric (min/max) per group of `group` inputs."""
    if w.shape[1] % group:
        raise SystemExit(f"rtn group {group} does not divide {name}'s {w.shape[1]} inputs")
    g = w.reshape(w.shape[0], -1, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = (hi - lo).clamp(min=1e-8) / (2 ** bits - 1)
    q = ((g - lo) / scale).round().clamp(0, 2 ** bits - 1)
    return (q * scale + lo).reshape_as(w)


def round_weights(bits: int, group: int):
    """Round-to-nearest, asymmetric (min/max) per group of `group` inputs, in every decoder
    layer's linear weights (the embedding table and head stay as they are)."""
    def edit(model):
        for name, mod in model.model.layers.named_modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.data = rtn(mod.weight.data, bits, group, name)
    return edit


def make_drafter(spec: str, target, demo_dir: Path):
    if spec == "demo":
        return TrainedDraft(target, demo_dir)
    if spec.startswith("skip:"):
        return TargetCopy(target, keep_layers([int(x) for x in spec[5:].split(",") if x]))
    if spec.startswith("rtn:"):
        parts = spec[4:].split(":")
        return TargetCopy(target, round_weights(int(parts[0]), int(parts[1]) if len(parts) > 1 else 32))
    if Path(spec).is_dir():
        return TrainedDraft(target, Path(spec))
    raise SystemExit(f"--draft {spec!r}: use demo, a draft directory, skip:I,J,... or rtn:BITS[:GROUP]")
