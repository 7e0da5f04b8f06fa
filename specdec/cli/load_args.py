"""From parsed command-line arguments to a loaded decoder: presets, hub ids, the demo pair,
and packing a checkpoint in a child process before it streams."""
from __future__ import annotations

import dataclasses
import sys
import tomllib
from pathlib import Path

from .exit_codes import EXIT_PROBLEM


def add_kernels_argument(p) -> None:
    p.add_argument("--kernels", choices=["auto", "reference"], default=None,
                   help="matmul paths: auto (default, or $SPECDEC_KERNELS) times this CPU's paths "
                   "once and uses the fastest per weight kind and token count; reference is "
                   "F.linear everywhere")


def settings_from_args(args):
    """The LoadSettings of the model flags (a preset's values where a flag is not given),
    checked before any hub id is fetched, then with hub ids resolved to local paths."""
    from ..drafts import ModelDraft
    from ..hub import resolve
    from ..quantized_draft import QuantizedDraft
    from ..load_settings import LoadSettings

    preset = getattr(args, "preset", None) or {}
    settings = LoadSettings(
        target=args.target or preset.get("target"), draft=args.draft or preset.get("draft"),
        ram=args.ram or preset.get("ram"), dtype=args.dtype,
        max_context=args.max_context or preset.get("max_context"), k=args.k,
        cache_dir=args.cache_dir, progress=True,
        speculation=args.speculation or preset.get("speculation"), tree_nodes=args.tree_nodes,
        tree_width=args.tree_width, lookup_branches=getattr(args, "lookup_branches", None),
        kernels=getattr(args, "kernels", None),
        expert_prefetch=_expert_prefetch(args),
        # Flags only, as --expert-guess: read_preset refuses expert keys in a preset.
        expert_reads=getattr(args, "expert_reads", None) or "direct",
        draft_quant=getattr(args, "draft_quant", None))
    draft = settings.draft
    if isinstance(draft, ModelDraft):  # a path as is, an `org/name` fetched
        draft = ModelDraft(resolve(draft.path))
    elif isinstance(draft, QuantizedDraft):
        draft = dataclasses.replace(draft, source=resolve(draft.source))
    return settings.replace(target=resolve(settings.target), draft=draft)


def is_demo(args) -> bool:
    """The command runs the demo pair: no target given, none in a preset."""
    preset = getattr(args, "preset", None) or {}
    return not (args.target or preset.get("target"))


def load_from_args(args):
    from ..session import open_decoder

    settings = settings_from_args(args)
    if settings.target is None:
        from ..demo_model import ensure_demo_gguf

        _pack_in_child(ensure_demo_gguf(args.cache_dir), "bfloat16", args.cache_dir)
    elif settings.ram is not None:
        _pack_in_child(settings.target, args.dtype, args.cache_dir)
    return open_decoder(settings)


def _pack_in_child(src: Path, dtype: str, cache_dir) -> None:
    """Pack a checkpoint that is about to stream into its store in a child process, when the
    store is not there yet: packing dequantizes the whole model, and memory it frees stays in
    this process's RSS, so the first session would report RAM above the budget it keeps to."""
    import multiprocessing

    from offload.format import is_store, looks_like_store

    from ..session import packed_store_path

    if not src.is_file() and not (src.is_dir() and not looks_like_store(src)):
        return  # a store already (maybe a damaged one), or not there: load() reports that
    if is_store(packed_store_path(src, dtype, cache_dir)):
        return
    child = multiprocessing.get_context("spawn").Process(
        target=_pack_quietly, args=(src, dtype, cache_dir), name="specdec-pack")
    child.start()
    try:
        child.join()
    except KeyboardInterrupt:
        child.terminate()
        raise
    # A failed child leaves no store; load() then packs in-process and reports the error.


def _pack_quietly(src: Path, dtype: str, cache_dir) -> None:
    """The child's work. A bad checkpoint exits quietly: load() then meets the same problem
    in this process and reports it as one line, instead of a child's traceback."""
    from ..session import packed_store

    try:
        packed_store(src, dtype, cache_dir, True)
    except (ValueError, OSError):
        sys.exit(EXIT_PROBLEM)


def read_preset(ref: str) -> dict:
    """A preset by path, else by name among those shipped in specdec/configs (package data)."""
    from ..configs import preset, preset_names

    path = Path(ref)
    if not path.exists():
        path = preset(ref)
    if not path.is_file():
        known = ", ".join(preset_names()) or "none"
        raise FileNotFoundError(f"{ref}: no such preset file or shipped preset (shipped: {known}).")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML ({e}).") from e
    unknown = set(data) - {"name", "target", "draft", "ram", "max_context", "notes", "speculation"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected target, draft, ram, "
                         "max_context, speculation, name, notes (the other settings are "
                         "command-line flags, e.g. --expert-reads).")
    return data


def _expert_prefetch(args) -> bool | str:
    """--expert-guess (none: off), else on (the default guess: LoadSettings). A preset has no
    such key (read_preset refuses it)."""
    guess = getattr(args, "expert_guess", None)
    if guess is not None:
        return False if guess == "none" else guess
    return True
