"""offload.atomic: a replaced file is the old one or the new one, never torn, and no temp
file is left behind either way."""
import os
import stat

import pytest

from offload.atomic import replacing, write_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(path) as tmp:
            tmp.write_text("half of the ne")
            raise RuntimeError("disk gone")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.json"]


def test_a_clean_write_replaces_with_ordinary_permissions(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text("old")
    write_atomic(path, "new ✓")
    write_atomic(tmp_path / "raw.bin", b"\x00\x01")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.json", "raw.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
