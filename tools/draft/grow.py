"""Deeper drafts from a trained one: new layers inserted so that the grown draft starts out
computing exactly what the trained draft computes.

A new layer is a copy of one of the target's layers with its two output projections
(`self_attn.o_proj`, `mlp.down_proj`) set to zero: both branches then add nothing to the
residual stream, so the layer is the identity and the grown draft's logits equal the trained
draft's at step 0 (block expansion, as LLaMA Pro grows a model). Training then has capacity
the warm start lacked without first losing what it knew. The projections' inputs are not
zero, so their gradients are not either: the layers start learning at the first step.

`--grow J:SRC[,J:SRC...]` inserts a copy of target layer SRC after the
trained draft's layer J (-1: before the first).
"""
from __future__ import annotations

from .distil import with_weights

ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def parse_grow(spec: str | None) -> list[tuple[int, int]]:
    """'1:2,3:10' -> [(1, 2), (3, 10)]: (after draft layer, target layer)."""
    if not spec:
        return []
    out = []
    for item in spec.split(","):
        after, _, src = item.partition(":")
        try:
            out.append((int(after), int(src)))
        except ValueError:
            raise SystemExit(f"--grow {spec!r}: each item is AFTER:TARGET_LAYER, e.g. 0:2,2:10") from None
    return out


def layer_plan(n_draft: int, n_target: int, grow: list[tuple[int, int]]) -> list[tuple[str, int]]:
    """The grown draft's layers in order: ("draft", j) for the trained draft's layer j,
    ("target", s) for a new layer copied from target layer s."""
    for after, src in grow:
        if not -1 <= after < n_draft:
            raise SystemExit(f"--grow {after}:{src}: the draft has layers 0..{n_draft - 1} "
                             f"(-1 inserts before the first)")
        if not 0 <= src < n_target:
            raise SystemExit(f"--grow {after}:{src}: the target has layers 0..{n_target - 1}")
    plan = [("target", s) for a, s in grow if a == -1]
    for j in range(n_draft):
        plan.append(("draft", j))
        plan += [("target", s) for a, s in grow if a == j]
    return plan


def grow_draft(draft, target, grow: list[tuple[int, int]]):
    """A new draft with the layers `grow` names inserted (zeroed output projections); `draft`
    itself unchanged. Without `grow`, `draft`."""
    if not grow:
        return draft
    from transformers import LlamaForCausalLM

    n_target = target.config.num_hidden_layers
    plan = layer_plan(draft.config.num_hidden_layers, n_target, grow)
    old, tsd = draft.state_dict(), target.state_dict()
    new = {k: v for k, v in old.items() if not k.startswith("model.layers.")}
    for i, (kind, j) in enumerate(plan):
        src, prefix = old if kind == "draft" else tsd, f"model.layers.{j}."
        for k, v in src.items():
            if k.startswith(prefix):
                name = k.removeprefix(prefix)
                value = v.clone().float()
                if kind == "target" and name in ZEROED:
                    value.zero_()
                new[f"model.layers.{i}.{name}"] = value
    config = draft.config.__class__.from_dict(draft.config.to_dict())
    config.num_hidden_layers = len(plan)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[0]] * len(plan)
    return with_weights(LlamaForCausalLM(config), new)


def target_layers(init_layers: list[int], grow: list[tuple[int, int]]) -> list[int]:
    """Which target layer each of the grown draft's layers was first copied from."""
    plan = layer_plan(len(init_layers), 10**9, grow)
    return [init_layers[j] if kind == "draft" else j for kind, j in plan]
