"""load_stats keeps a snapshot of the concatenated tables, keyed by every fragment's identity: never stale."""

from __future__ import annotations

import stat
from dataclasses import fields

import pandas as pd
import pytest
from _fixtures_runs import write_lightning_run, write_safetensors_run

from ckptboard.core.atomic import DIR_MODE
from ckptboard.core.cache import StatsCache
from ckptboard.core.schema import StatsTables
from ckptboard.core.summarize import summarize
from ckptboard.core.load import load_stats

N_TENSORS = 9  # TinyNet's state_dict (see tests/_fixtures_runs.py)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "runs"
    write_lightning_run(root / "lightning", 3)
    write_safetensors_run(root / "safetensors", 3)
    summarize(root)
    return root


def _snapshots(root):
    folder = StatsCache(root).dir / "snapshot"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _assert_same(a: StatsTables, b: StatsTables) -> None:
    for f in fields(StatsTables):
        pd.testing.assert_frame_equal(getattr(a, f.name), getattr(b, f.name), check_dtype=False)


def test_second_load_reads_the_snapshot_and_equals_the_fragments(root):
    first = load_stats(root)  # from the fragments; writes the snapshot
    (name,) = _snapshots(root)
    # Readable by the team like the fragments (0o777 less the umask), not mkdtemp's 0o700.
    assert stat.S_IMODE((StatsCache(root).dir / "snapshot" / name).stat().st_mode) == DIR_MODE != 0o700
    _assert_same(load_stats(root), first)


def test_new_checkpoint_changes_the_key_and_old_snapshots_go(root):
    load_stats(root)
    (old,) = _snapshots(root)
    write_safetensors_run(root / "safetensors", 4)  # adds step 6
    summarize(root)
    tables = load_stats(root)
    assert len(tables.checkpoints) == 7 and len(tables.tensors) == 7 * N_TENSORS  # 3 + 4 checkpoints
    assert old not in _snapshots(root) and len(_snapshots(root)) == 1


def test_deleted_checkpoint_is_left_out_of_a_snapshot_before_summarize(root):
    load_stats(root)
    (root / "lightning" / "epoch=1-step=2.ckpt").unlink()
    tables = load_stats(root)  # same fragments, so the same snapshot: filtered at load
    assert "lightning/epoch=1-step=2.ckpt" not in set(tables.checkpoints["checkpoint"])
    assert "lightning/epoch=1-step=2.ckpt" not in set(tables.tensors["checkpoint"])
    assert len(tables.checkpoints) == 5


def test_damaged_snapshot_falls_back_to_the_fragments(root):
    first = load_stats(root)
    (snapshot,) = _snapshots(root)
    (StatsCache(root).dir / "snapshot" / snapshot / "tensors.parquet").write_bytes(b"PAR1 not parquet")
    _assert_same(load_stats(root), first)


def test_unwritable_snapshot_folder_still_loads(root):
    # A file where the snapshot folder goes makes every snapshot write fail (chmod would not stop root, as in CI).
    blocker = StatsCache(root).dir / "snapshot"
    blocker.write_text("not a folder")
    tables = load_stats(root)
    assert len(tables.tensors) == 6 * N_TENSORS
    assert blocker.read_text() == "not a folder"
