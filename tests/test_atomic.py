"""Atomic writes: complete files with ordinary permissions, nothing left behind by a failed write."""

import os
import stat

import pytest

from ckptboard.core.atomic import TMP_PREFIX, atomic_write


def test_written_file_has_umask_permissions_not_mkstemps(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "report.html", lambda f: f.write(b"<html></html>"))
    finally:
        os.umask(old)
    assert path.read_bytes() == b"<html></html>"
    # 0o666 & ~0o022 = 0o644: readable by the team, unlike mkstemp's 0o600.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "stats.csv"
    path.write_text("old\n")

    def half_then_fail(f):
        f.write(b"new, half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.csv"]
    assert TMP_PREFIX.startswith(".")  # hidden: discovery and fragment listing skip it
