"""The STRONG-PAIR draft of the inflated workloads: the demo target (SmolLM2-135M-Instruct)
with every decoder linear weight re-rounded to 4 bits (min/max per 64 inputs, `rtn:4:64` of
tools/draft/drafters.py), inflated to the cost of a 0.5B-class draft.

Why: the demo draft (8 layers, trained here) agrees with the target ~0.5 per token on prompts
nobody tuned for, far below published same-family pairs (~0.75-0.8). `rtn:4:64` agrees
0.72-0.75 at the first drafted position and 0.74-0.80 deeper on independent prompts
(docs/demo-draft-training.md, "Strong-pair candidates"), so a bench row with it shows the speed
a user gets with a good drafter, while inflating it makes each drafted token cost what a real
0.5B draft's does. It is a stand-in, labelled as such in every report ("strong pair").

Shape: the demo draft inflates into `inflated-draft` (hidden 896, 24 layers); the target has
30 layers, so the strong draft takes `inflated-strong-draft`: the same hidden size and heads
with 30 layers and a narrower MLP (intermediate 3360), chosen so that a drafted token
multiplies the same number of weights (layers + output layer; the strong draft scores the
whole vocabulary, the demo draft its 16384 ids):
24 * 15.48M + 16384 * 896 = 386.3M against 30 * 11.44M + 49152 * 896 = 387.2M (+0.25%).
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from .builder import SHAPES, Shape, Source, target_source, write_hf

BITS, GROUP = 4, 64
STRONG_SHAPE = "inflated-strong-draft"
_LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight")


def rounded_source(source: Source, bits: int = BITS, group: int = GROUP) -> Source:
    """`source` with every decoder-layer linear weight rounded as tools.draft's `rtn:BITS:GROUP`
    (embedding, norms and output layer unchanged)."""
    from tools.draft.drafters import rtn

    def get(name: str) -> torch.Tensor:
        t = source.get(name)
        return rtn(t.float(), bits, group, name) if _LINEAR.fullmatch(name) else t

    return replace(source, get=get, describe=f"rtn:{bits}:{group} copy of {source.describe} "
                                             "(STRONG-PAIR draft)")


def write_strong_draft(out_dir: Path, target: Source | None = None, keep_free: int = 1 << 30,
                       progress: bool = True, shape: Shape | str = STRONG_SHAPE,
                       group: int = GROUP) -> Path:
    """The strong-pair draft (the target's rtn:4:GROUP copy, inflated to `shape`) as a bf16 HF
    dir; `target`: the demo target by default (tests pass a tiny one)."""
    source = rounded_source(target or target_source(), BITS, group)
    return write_hf(source, SHAPES[shape] if isinstance(shape, str) else shape, out_dir,
                    torch.bfloat16, keep_free=keep_free, progress=progress)
