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
    except Exception as e:  # the hub client raises many types; all mean "not available"
        raise ModelNotFound(
            f"{ref}: not a local path and could not be downloaded ({type(e).__name__}: {e}). "
            f"Offline? Download it on a connected machine (huggingface-cli download {ref}) and "
            "pass the local directory with --target/--draft.") from e


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~", "/"))
