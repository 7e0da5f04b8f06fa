"""The load settings: one frozen LoadSettings, built by specdec.load(), the commands' model
flags and serve alike, checked in one place (validate) before anything is read.

`resolve()` then fills what depends on other fields: the demo pair's defaults when there is
no target, the speculation mode the draft kind drives, the prompt-lookup branches a tree gets.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from offload.expert_guess import GUESSES

from .drafts import Draft, parse_draft
from .loading import parse_dtype
from .quantized_draft import check_draft_quant, quantized
from .speculate.registry import DEFAULT_LOOKUP_BRANCHES, MODES, Speculation, check_mode

EXPERT_READS = ("direct", "page-cache")  # offload/expert_reads.py
DEFAULT_MODE = "chain"  # as fast or faster than a tree on the demo pair (docs/demo-draft.md)


@dataclass(frozen=True)
class LoadSettings:
    target: Path | None = None  # None: the offline demo pair (specdec/demo.py)
    draft: Draft | None = None  # None: plain decoding (parse_draft takes paths and names)
    ram: object = None  # "4GB", bytes, a Budget; None: everything in RAM (a store: derived)
    dtype: str = "bfloat16"
    max_context: int | None = None  # None: the model's, capped (session.DEFAULT_MAX_CONTEXT)
    kernels: str | None = None  # None: $SPECDEC_KERNELS or "auto"
    cache_dir: Path | None = None
    progress: bool = True
    speculation: str | None = None  # None: the draft kind's default mode
    k: int | None = None
    tree_nodes: int | None = None
    tree_width: int = 4
    lookup_branches: int | None = None  # None: DEFAULT_LOOKUP_BRANCHES on an adaptive tree
    pack_dtype: str | None = None  # a packed checkpoint's plain tensors (None: dtype)
    expert_prefetch: bool | str = True  # a MoE target reads the next layer's guessed experts early (GUESSES; True: DEFAULT_GUESS)
    expert_reads: str = "direct"  # a MoE target's expert reads: "direct" (O_DIRECT + own cache) or "page-cache"
    draft_quant: str | None = None  # "q4"/"q8": the draft model's low-bit copy (quantized_draft.py)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if self.target is not None:
            set_("target", Path(self.target).expanduser())
        set_("draft", quantized(parse_draft(self.draft), self.draft_quant, self.cache_dir,
                                self.progress))
        self.validate()

    def validate(self) -> None:
        """Every check that needs no file: each field's range, then how fields combine."""
        parse_dtype(self.dtype)
        _check_int("max_context", self.max_context, 2, "the KV cache must hold >= 2 tokens")
        _check_int("k", self.k, 0, "drafted tokens per pass; 0 = plain decoding")
        _check_int("tree_nodes", self.tree_nodes, 1, "None: sized per pass by the cost model")
        _check_int("tree_width", self.tree_width, 1, "children per tree node", optional=False)
        _check_int("lookup_branches", self.lookup_branches, 0, "0: none")
        if self.expert_prefetch not in (False, True, None, *GUESSES):
            raise ValueError(f"expert_prefetch must be one of {GUESSES}, True (the default guess) or "
                             f"False (none), got {self.expert_prefetch!r}")
        if self.expert_reads not in EXPERT_READS:
            raise ValueError(f"expert_reads must be one of {EXPERT_READS}, got {self.expert_reads!r}")
        if self.speculation is not None:
            check_mode(self.speculation)
        self._check_draft_drives_mode()
        if self.draft_quant is not None:
            check_draft_quant(self.draft_quant)
        if self.draft_quant is not None and self.draft is None and self.target is not None:
            raise ValueError(f"draft_quant={self.draft_quant!r} makes a low-bit copy of a draft "
                             "model, but no draft was given; pass draft=PATH too, or leave "
                             "draft_quant out for plain decoding.")
        if self.tree_nodes is not None and self.draft is not None and not _drafts_with_model(self.draft):
            raise ValueError(f"tree_nodes sizes a draft model's tree; with {self.draft.describe()} "
                             "use k for a fixed number of lookup tokens per pass (default: sized "
                             "by the cost model).")
        mode = self.mode()
        if self.lookup_branches and mode != "tree":
            raise ValueError(f"lookup_branches adds prompt-lookup nodes to a draft tree, but "
                             f"speculation={mode!r}; use speculation='tree' with a draft model, "
                             "or draft='lookup' for lookup alone.")

    def _check_draft_drives_mode(self) -> None:
        mode, draft = self.speculation, self.draft
        if draft is None or mode is None or mode in draft.modes or self._default_for(draft):
            return
        if MODES[mode].needs_model:
            raise ValueError(f"speculation={mode!r} needs a draft model; {draft.describe()} drafts "
                             "from the context's n-grams. Drop the speculation setting, or pass a "
                             "draft model for tree/overlap.")
        raise ValueError(f"speculation={mode!r} drafts from the context, not from a model, but "
                         f"{draft.describe()} was given; pass draft={mode!r} alone, or "
                         "speculation='chain' / 'tree' to use the draft model.")

    def _default_for(self, draft: Draft) -> bool:
        """speculation='chain', the default mode, given with a model-free draft stands for
        that draft's own mode (as presets and scripts that always name it expect)."""
        return self.speculation == DEFAULT_MODE and not _drafts_with_model(draft)

    def mode(self) -> str:
        if self.draft is not None and (self.speculation is None or self._default_for(self.draft)):
            return self.draft.modes[0]
        return self.speculation or DEFAULT_MODE

    def resolved_speculation(self) -> Speculation:
        mode = self.mode()
        branches = self.lookup_branches
        if branches is None:
            branches = DEFAULT_LOOKUP_BRANCHES if mode == "tree" and self.tree_nodes is None else 0
        return Speculation(mode, self.k, self.tree_nodes, self.tree_width, branches)

    def replace(self, **changes) -> "LoadSettings":
        return dataclasses.replace(self, **changes)

    def with_demo_defaults(self) -> "LoadSettings":
        """No target: the offline demo pair's target, draft, RAM and context where not given
        (fetching the demo GGUF into the cache on first use). No draft: plain decoding, or the
        shipped draft model when a speculation mode, k or a tree size is given (specdec/demo.py)."""
        if self.target is not None:
            return self
        from .demo import demo_pair

        draft_model = (self.k is not None or self.tree_nodes is not None or self.draft_quant is not None
                       or (self.speculation is not None and MODES[self.speculation].needs_model))
        demo = demo_pair(self.draft, self.ram, self.max_context, self.cache_dir, draft_model)
        return self.replace(target=demo.target, draft=demo.draft, ram=demo.ram,  # quantized anew
                            max_context=demo.max_context, pack_dtype=demo.pack_dtype)


def _drafts_with_model(draft: Draft) -> bool:
    return any(MODES[m].needs_model for m in draft.modes)


def _check_int(name: str, value, low: int, what: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {kind} ({what}), got {value!r}")
