"""Data files shipped inside the package: model presets (`*.toml`, `specdec --config NAME`),
the demo's evaluation prompts (demo_prompts.toml) and the benchmark prompts (bench/prompts.toml).

Read through importlib.resources, so an installed wheel finds them as a source checkout does.
"""
from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

PROMPTS_FILES = {"demo_prompts.toml", "bench"}  # not presets


def resource(*parts: str) -> Traversable:
    """A file shipped in this package, e.g. resource("bench", "prompts.toml")."""
    return files(__name__).joinpath(*parts)


def preset(name: str) -> Traversable:
    """The preset NAME (with or without .toml); may not exist (see preset_names)."""
    return resource(f"{name.removesuffix('.toml')}.toml")


def preset_names() -> list[str]:
    return sorted(f.name.removesuffix(".toml") for f in files(__name__).iterdir()
                  if f.name.endswith(".toml") and f.name not in PROMPTS_FILES)
