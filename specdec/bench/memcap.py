"""RAM caps and page-cache control for benchmarks (Linux; no model code here).

A benchmark that streams weights from disk measures RAM, not disk, if the page cache can
hold the model. Two ways to emulate a small-RAM device:

* `MemoryCap`: a memory cgroup (v2, else v1) with a hard limit. The limit covers the
  process's own memory *and* the page cache it fills, so a reader that goes through the
  cache (mmap, buffered reads) must re-read from disk once the cap is full, as on a real
  device with that much RAM. Needs root or a delegated cgroup.
* `evict_page_cache(paths)`: drop cached pages of the files before a run (posix_fadvise
  DONTNEED per file, and /proc/sys/vm/drop_caches when writable). It makes the first
  read cold, but does not stop a run from caching the model while it goes.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


class MemoryCap:
    """A memory cgroup with a hard limit; `add(pid)` puts a process under it."""

    def __init__(self, path: Path, version: int, limit_bytes: int):
        self.path, self.version, self.limit_bytes = path, version, limit_bytes

    @classmethod
    def create(cls, limit_bytes: int, root: Path = CGROUP_ROOT) -> "MemoryCap | None":
        """A new capped cgroup, or None where none can be made (no permission, no memory
        controller): the caller falls back to eviction and says so."""
        name = f"specdec-bench-{uuid.uuid4().hex[:8]}"
        for parent, version in _candidate_parents(root):
            try:
                path = parent / name
                path.mkdir()
            except OSError:
                continue
            cap = cls(path, version, limit_bytes)
            try:
                cap._write_limit()
                return cap
            except OSError:
                cap.close()
        return None

    @property
    def description(self) -> str:
        return f"memory cgroup v{self.version} at {self.path} (limit {self.limit_bytes} bytes)"

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def peak_bytes(self) -> int | None:
        """Peak usage (process memory plus page cache) since the cgroup was made (each
        contender gets a fresh one)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        return _read_int(self.path / name)

    def oom_kills(self) -> int:
        if self.version == 1:
            text = _read_text(self.path / "memory.oom_control") or ""
        else:
            text = _read_text(self.path / "memory.events") or ""
        for line in text.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        # The kernel refuses while a process is still inside; a killed child may take a
        # moment to leave, so retry briefly before leaving the (empty, harmless) group.
        for _ in range(40):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)

    def _write_limit(self) -> None:
        if self.version == 1:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit_bytes))
            swap = self.path / "memory.memsw.limit_in_bytes"
            if swap.exists():  # no escape into swap either
                try:
                    swap.write_text(str(self.limit_bytes))
                except OSError:
                    pass
        else:
            (self.path / "memory.max").write_text(str(self.limit_bytes))
            swap = self.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")


def _candidate_parents(root: Path):
    """Where a child cgroup with a memory limit may be made: v2 first, then v1."""
    for base in (root, root / "unified"):
        controllers = _read_text(base / "cgroup.controllers")
        if controllers and "memory" in controllers.split():
            _enable_memory_controller(base)
            yield base, 2
    if (root / "memory" / "memory.limit_in_bytes").exists():
        yield root / "memory", 1


def _enable_memory_controller(base: Path) -> None:
    try:
        (base / "cgroup.subtree_control").write_text("+memory")
    except OSError:
        pass  # already on, or not ours to change: mkdir + limit will tell


def evict_page_cache(paths) -> list[str]:
    """Drop the page cache for every file under `paths`; return what was done (for the report).

    Per-file posix_fadvise first: it touches nobody else's cache. The machine-wide
    drop_caches only when a file could not be advised (other processes pay for it)."""
    os.sync()  # dirty pages cannot be dropped
    done, files, failed = [], 0, 0
    for f in _files_under(paths):
        if _fadvise_dontneed(f):
            files += 1
        else:
            failed += 1
    if files:
        done.append(f"posix_fadvise(DONTNEED) on {files} files")
    if failed == 0:
        return done
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
        done.append("drop_caches=1")
    except OSError:
        pass  # not permitted here: fadvise alone has to do
    return done


def _fadvise_dontneed(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _files_under(paths):
    for p in paths:
        p = Path(p)
        if p.is_file():
            yield p
        elif p.is_dir():
            yield from (f for f in p.rglob("*") if f.is_file())


def proc_io(pid: int | str = "self") -> dict[str, int]:
    """/proc/<pid>/io as ints ({} where unreadable: not Linux, or the process is gone)."""
    text = _read_text(Path(f"/proc/{pid}/io"))
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            out[key.strip()] = int(value)
    return out


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None
