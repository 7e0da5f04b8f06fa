"""The sampling settings: one frozen SamplingParams, one check per field, and the defaults
of each front end (a preset) in one table.

Every front end builds its SamplingParams here: the Python API from keywords, `specdec
chat` / `generate` from flags, the chat's /set from text, `specdec serve` from a request's
JSON. Fields a caller leaves out come from a preset (SAMPLING_PRESETS), so the only thing
that differs between front ends is which preset they start from.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable


class SamplingError(ValueError):
    """A sampling setting out of range; `field` names it (serve reports it as the param)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Setting:
    """How one field is checked, and how its valid values are described in errors."""
    kind: type  # int or float
    ok: Callable[[object], bool]
    bound: str  # ">= 0", "in (0, 1]"
    hint: str = ""  # what notable values mean: "0 = greedy"
    optional: bool = False  # None is a value (the seed: a fresh one per call)

    @property
    def valid(self) -> str:
        """"a number >= 0 (0 = greedy)": what a value must be."""
        noun = "an integer" if self.kind is int else "a number"
        return f"{noun} {self.rule}".rstrip()

    @property
    def rule(self) -> str:
        """">= 0 (0 = greedy)": the range, for "NAME must be ..."."""
        return f"{self.bound} ({self.hint})".lstrip() if self.hint else self.bound


SETTINGS: dict[str, Setting] = {
    "temperature": Setting(float, lambda v: v >= 0, ">= 0", "0 = greedy"),
    "top_k": Setting(int, lambda v: v >= 0, ">= 0", "0 = off"),
    "top_p": Setting(float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "repetition_penalty": Setting(float, lambda v: v > 0, "> 0", "1 = off"),
    "repetition_window": Setting(int, lambda v: v >= 0, ">= 0",
                                 "the last N tokens the penalty looks at; 0 = all"),
    "seed": Setting(int, lambda v: True, "", "none: a fresh seed per call", optional=True),
}


def check_value(name: str, value):
    """`value` if it is a valid `name` (the right type, finite, in range); else SamplingError."""
    setting = SETTINGS[name]
    if value is None and setting.optional:
        return value
    right_type = (isinstance(value, int) if setting.kind is int
                  else isinstance(value, (int, float)) and math.isfinite(value))
    if isinstance(value, bool) or not right_type or not setting.ok(value):
        raise SamplingError(f"{name} must be {setting.valid}, got {value!r}", name)
    return value


def parse_text(name: str, text: str, label: str | None = None):
    """A value typed by a user (a flag, a chat /set) -> the field's value; SamplingError says
    what a valid one is, naming the field as `label` (the flag, say)."""
    setting = SETTINGS[name]
    try:
        value = setting.kind(text)
    except ValueError:
        raise SamplingError(f"{text!r} is not {setting.valid}", name) from None
    if setting.kind is float and not math.isfinite(value):
        raise SamplingError(f"{text!r} is not a finite number", name)
    if not setting.ok(value):
        raise SamplingError(f"{text} is out of range: {label or name} must be {setting.rule}", name)
    return value


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen: temperature 0 is greedy; top_k / top_p narrow the choice;
    repetition_penalty > 1 discourages tokens among the last `repetition_window` (0 = the
    whole context), as transformers and llama.cpp do; `seed` seeds the sampler (None: a
    fresh seed per call). Speculation keeps the output exact under any of these."""
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages tokens already present
    repetition_window: int = 64  # the penalty looks at the last N tokens (0 = all of them)
    seed: int | None = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> "SamplingParams":
        """These settings with `changes`; an unknown name is a TypeError listing the known."""
        unknown = sorted(set(changes) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown sampling setting {', '.join(map(repr, unknown))}; the "
                            f"settings are {', '.join(SETTINGS)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# The defaults of each front end. Greedy decoding of small instruct models loops, so the
# commands add a light repetition penalty (llama.cpp's and Ollama's 1.1 over 64 tokens).
SAMPLING_PRESETS: dict[str, SamplingParams] = {
    # The Python API: the target's own most likely tokens, reproducible.
    "default": SamplingParams(),
    # `specdec chat` with a real model: sampled, as chat front ends are.
    "chat": SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1),
    # `specdec generate` with a real model: greedy (deterministic), without loops.
    "generate": SamplingParams(repetition_penalty=1.1),
    # `specdec serve` with a real model: OpenAI's defaults (sampled, a fresh seed each request).
    "serve": SamplingParams(temperature=1.0, seed=None),
    # The demo pair, in every front end (as an Ollama model file carries its parameters). A
    # 135M model sampled hot answers wrongly about half the time, so greedy; a penalty of 1.1
    # over the last 16 tokens was the setting with no loop, the most right answers and the
    # most acceptance in the grid of docs/usage.md (docs/measurements/demo_sampling.py); over the
    # usual 64 tokens it costs the small model right answers and acceptance.
    "demo": SamplingParams(temperature=0.0, repetition_penalty=1.1, repetition_window=16),
}


def preset(name: str) -> SamplingParams:
    if name not in SAMPLING_PRESETS:
        raise ValueError(f"no sampling preset {name!r}; the presets are {', '.join(SAMPLING_PRESETS)}")
    return SAMPLING_PRESETS[name]
