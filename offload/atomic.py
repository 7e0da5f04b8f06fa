"""Durable file replacement, for every file this project writes that a reader may trust:
write a temp file in the target's directory, fsync it, rename it over the target, fsync the
directory. A crash leaves the old file or the new one, never a torn one; a failure removes
the temp file."""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """Yields a temp path beside `path` for the caller to write by any means (open(), a
    library's save function); on a clean exit it is fsynced and renamed over `path`, on an
    exception removed. The temp name is `.NAME.PID.RANDOM.tmp` (hidden, unique per writer)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # Created here with the umask's usual permissions (mkstemp's would be 0600).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_atomic(path: Path | str, data: str | bytes) -> None:
    """Replace `path` with `data` (text is written as UTF-8)."""
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def fsync_path(path: Path | str) -> None:
    """fsync a file or a directory (a directory's fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
