"""Model references: a local path, or a Hugging Face hub id downloaded when online."""
from __future__ import annotations

from pathlib import Path

WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer*", "*.jinja"]


class ModelNotFound(FileNotFoundError):
    pass


def resolve(ref: str | Path | None) -> Path | None:
    """A local path as is; `org/name` fetched (safetensors and tokenizer only) into the
    hub cache. Offline or unknown: an error that says how to use a local copy."""
    if ref is None:
        return None
    path = Path(ref).expanduser()
    if path.exists() or not _looks_like_hub_id(str(ref)):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ModelNotFound(f"{ref}: not a local path, and huggingface_hub is not installed to "
                            "download it. Download the model and pass its directory.") from e
    try:
        return Path(snapshot_download(str(ref), allow_patterns=WEIGHT_PATTERNS))
    except Exception as e:  # the hub client raises many types; all mean "not available here"
        raise ModelNotFound(_not_available(str(ref), e)) from e


def _not_available(ref: str, error: Exception) -> str:
    """One line: what happened and the command that fixes it (the library's own multi-line
    text stays in the exception chain, for --debug or a traceback, not in front of the user)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if "RepositoryNotFoundError" in names:
        why = "no such model on the Hugging Face hub (or it is private)"
    elif "GatedRepoError" in names:
        why = "the model is gated: accept its licence on huggingface.co and log in (hf auth login)"
    else:
        why = "the hub could not be reached (offline?)"
    return (f"{ref}: not a local path, and {why}. Download it on a connected machine "
            f"(hf download {ref} --local-dir DIR) and pass that directory with --target/--draft.")


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~", "/"))
