"""The cache identity of a checkpoint: a different file put in place with the same size and its mtime restored
(``cp`` then ``touch -r``, ``rsync -t`` of another run's file) is recomputed, not served from the cache."""

from __future__ import annotations

import os
import shutil

import pandas as pd
from _fixtures_runs import write_safetensors_run

from ckptboard.core.discover import file_identity
from ckptboard.core.load import load_stats
from ckptboard.core.summarize import summarize


def test_a_swapped_file_with_the_same_size_and_mtime_is_recomputed(tmp_path):
    root = tmp_path / "runs"
    write_safetensors_run(root / "run", 3, seed=1)
    other = write_safetensors_run(tmp_path / "other", 3, seed=7)  # same model, other values: same sizes
    summarize(root)

    victim = root / "run" / "step_000002.safetensors"
    before = victim.stat()
    shutil.copyfile(other[1], victim)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    report = summarize(root)
    # The swapped file, and the next one (whose update statistics compare against it).
    assert (report.computed, report.cached) == (2, 1)
    fresh = tmp_path / "fresh"
    shutil.copytree(root, fresh, ignore=shutil.ignore_patterns(".ckptboard"))
    summarize(fresh)
    columns = ["checkpoint", "name", "mean", "std", "norm", "max"]
    pd.testing.assert_frame_equal(load_stats(root).tensors[columns], load_stats(fresh).tensors[columns])


def test_identity_changes_with_inode_or_ctime_only(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"x" * 16)
    first = file_identity(path)
    st = path.stat()
    replacement = tmp_path / "b.safetensors"
    replacement.write_bytes(b"y" * 16)
    os.replace(replacement, path)  # a new inode under the old name
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = file_identity(path)
    assert (second.size, second.mtime_ns) == (first.size, first.mtime_ns)
    assert second != first
    assert file_identity(path) == second  # stable while nothing happens
