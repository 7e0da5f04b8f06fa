"""Names of a mixture-of-experts layer's tensors, one spelling for every family.

Qwen2-MoE, Qwen3-MoE and OLMoE checkpoints name a layer's router `mlp.gate.weight` and its
experts `mlp.experts.E.{gate,up,down}_proj.weight` (Qwen2-MoE adds `mlp.shared_expert.*` and
`mlp.shared_expert_gate.weight`). Mixtral spells the same tensors `block_sparse_moe.gate.weight`
and `block_sparse_moe.experts.E.w1/w3/w2.weight` (w1 gate, w3 up, w2 down): those are renamed
to the common spelling as the checkpoint is read, so the store, the shape checks, the
quantizer and the decoder know one set of names. Plain strings; no torch.
"""
from __future__ import annotations

import re

ROUTER = "mlp.gate.weight"
EXPERT_PARTS = ("gate_proj.weight", "up_proj.weight", "down_proj.weight")
SHARED_PARTS = tuple(f"mlp.shared_expert.{p}" for p in EXPERT_PARTS)
SHARED_GATE = "mlp.shared_expert_gate.weight"
# "mlp.experts.12.up_proj.weight" -> (12, "up_proj.weight")
EXPERT_NAME = re.compile(r"^mlp\.experts\.(\d+)\.(.+)$")
MIXTRAL_PARTS = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
MIXTRAL_NAME = re.compile(r"^(model\.layers\.\d+\.)block_sparse_moe\.(gate|experts\.\d+\.(w[123]))\.(weight)$")


def expert_tensor_name(expert: int, part: str) -> str:
    """Layer-relative name of one expert's tensor ("mlp.experts.3.down_proj.weight")."""
    return f"mlp.experts.{expert}.{part}"


def split_expert_name(relative: str) -> tuple[int, str] | None:
    """(expert, part) of a layer-relative expert tensor name, else None (a dense tensor)."""
    m = EXPERT_NAME.match(relative)
    return (int(m.group(1)), m.group(2)) if m else None


def common_name(name: str) -> str:
    """A checkpoint tensor's name in the common MoE spelling (Mixtral's renamed, the rest as is)."""
    m = MIXTRAL_NAME.match(name)
    if m is None:
        return name
    prefix, what, w = m.group(1), m.group(2), m.group(3)
    if w is None:
        return f"{prefix}{ROUTER}"
    expert = what.split(".")[1]
    return f"{prefix}mlp.experts.{expert}.{MIXTRAL_PARTS[w]}.weight"

# The key under which a streamed layer's dict offers its experts (offload/expert_stream.py):
# an object whose `batches(ids)` yields (expert, {part: tensor}) pairs, reading them as needed.
# A layer dict without it holds every expert's tensors by name (all in RAM).
EXPERT_SOURCE = "mlp.experts"
