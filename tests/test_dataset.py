"""The stats cache read in place (core/dataset.py): filtered reads equal filtering the whole tables, files outside a
selection are never opened, damaged or old-format fragments are left out with one warning, and a writer that died
half way leaves nothing half-read."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import fields

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _fixtures_runs import write_lightning_run, write_safetensors_run

from ckptboard.core import dataset as dataset_module
from ckptboard.core.cache import CacheWarning, StatsCache
from ckptboard.core.dataset import Selection, StatsDataset
from ckptboard.core.fragment import table_path
from ckptboard.core.load import load_stats
from ckptboard.core.schema import FORMAT_VERSION, StatsTables, TableName
from ckptboard.core.summarize import summarize

N_TENSORS = 9  # TinyNet's state_dict (see tests/_fixtures_runs.py)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "runs"
    write_lightning_run(root / "lightning", 3)
    write_safetensors_run(root / "safetensors", 3)
    summarize(root)
    return root


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


def test_filtered_reads_equal_filtering_the_whole_tables(root):
    whole = load_stats(root)
    data = StatsDataset(root)
    selection = Selection(runs=("safetensors",), steps=(2, 4), names=("fc.weight", "bn.running_var"))
    for name in TableName:
        frame = getattr(whole, str(name))
        keep = frame["run"].isin(selection.runs)
        if "step" in frame:
            keep &= frame["step"].between(2, 4)
        if "name" in frame:
            keep &= frame["name"].isin(selection.names)
        _same(data.frame(name, selection), frame[keep])
    assert len(data.frame(TableName.HISTOGRAMS, selection)) == 2 * 2  # 2 tensors x steps 2 and 4


def test_module_prefix_takes_the_module_and_its_children_only(root):
    tensors = StatsDataset(root).frame(TableName.TENSORS, Selection(modules=("fc",)))
    assert set(tensors["module"]) == {"fc"} and len(tensors) == 6 * 2  # fc.weight, fc.bias in 6 checkpoints


def test_columns_are_read_alone(root):
    frame = StatsDataset(root).frame(TableName.TENSORS, Selection(runs=("lightning",)), columns=["name", "norm"])
    assert list(frame.columns) == ["name", "norm"] and len(frame) == 3 * N_TENSORS


def test_files_outside_the_selection_are_not_opened(root, monkeypatch):
    opened = []
    real = dataset_module._scan
    monkeypatch.setattr(dataset_module, "_scan", lambda paths, *a: opened.extend(paths) or real(paths, *a))
    data = StatsDataset(root)
    data.frame(TableName.HISTOGRAMS, Selection(runs=("lightning",), steps=(2, 2)))
    assert [p.parent.name for p in opened] == ["histograms"] and len(opened) == 1  # one checkpoint: step 2 of one run


def test_table_view_reads_each_table_once_on_first_access(root):
    calls = []
    view = StatsDataset(root).view(Selection(runs=("lightning",)),
                                   reader=lambda d, t, s: calls.append(t) or d.frame(t, s))
    assert len(view.tensors) == 3 * N_TENSORS and len(view.tensors) == 3 * N_TENSORS
    assert calls == [TableName.TENSORS]
    narrow = view.narrow(names=["fc.weight"])
    assert set(narrow.histograms["name"]) == {"fc.weight"} and set(narrow.histograms["run"]) == {"lightning"}
    with pytest.raises(AttributeError):
        view.no_such_table


def test_deleted_checkpoint_is_left_out_before_summarize(root):
    (root / "lightning" / "epoch=1-step=2.ckpt").unlink()
    tables = load_stats(root)
    assert "lightning/epoch=1-step=2.ckpt" not in set(tables.checkpoints["checkpoint"])
    assert "lightning/epoch=1-step=2.ckpt" not in set(tables.tensors["checkpoint"])
    assert len(tables.checkpoints) == 5


def test_damaged_table_file_leaves_out_that_file_with_one_warning(root):
    cache = StatsCache(root)
    victim = table_path(cache.dir, TableName.TENSORS, cache.stem("lightning/epoch=1-step=2.ckpt"))
    victim.write_bytes(b"PAR1 not parquet")
    with pytest.warns(CacheWarning, match="1 stats cache fragment") as caught:
        tensors = load_stats(root).tensors
    assert len(caught) == 1 and "tensors/" in str(caught[0].message)
    assert len(tensors) == 5 * N_TENSORS


def test_a_writer_that_died_before_its_commit_record_leaves_nothing_read(root):
    cache = StatsCache(root)
    relpath = "lightning/epoch=1-step=2.ckpt"
    cache.fragment_path(relpath).unlink()  # as write_fragment does first; the table files are still there
    tables = load_stats(root)
    assert relpath not in set(tables.tensors["checkpoint"]) and relpath not in set(tables.histograms["checkpoint"])


def test_single_file_cache_of_an_older_version_is_recomputed_with_one_warning_and_pruned(root, tmp_path):
    cache = StatsCache(root)
    # Format versions 1 and 2 kept one nested row per fragment at the top of the cache (footer version "1" or "2").
    legacy = [cache.dir / f"{cache.stem(r)}.parquet" for r in ("lightning/epoch=0-step=0.ckpt", "gone.pt")]
    for path in legacy:
        table = pa.table({"tensors": [[{"name": "w"}]]}).replace_schema_metadata({b"ckptboard.format_version": b"1"})
        pq.write_table(table, path)
    with pytest.warns(CacheWarning, match="2 stats cache fragment") as caught:
        load_stats(root)
    assert len(caught) == 1 and "single-file fragment of an older format version" in str(caught[0].message)
    for path in cache.fragments():  # as if only the old cache were there
        path.unlink()
    with pytest.warns(CacheWarning, match=f"older format version, this ckptboard reads {FORMAT_VERSION}") as caught:
        report = summarize(root)
    assert len(caught) == 1 and report.computed == 6
    assert not any(p.exists() for p in legacy)  # pruned: never read again
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert len(load_stats(root).tensors) == 6 * N_TENSORS


def test_every_registered_table_is_a_field_of_stats_tables():
    # Storage and loading iterate TableName; the one place a new table is named besides the registry is StatsTables.
    assert [f.name for f in fields(StatsTables)] == [str(n) for n in TableName]


def test_health_view_columns_give_the_same_findings_as_whole_tables(root):
    from ckptboard.core.health import health_table
    from ckptboard.dashboard.views.health import _HEALTH_COLUMNS

    whole = health_table(load_stats(root))
    narrow = health_table(StatsDataset(root).view(Selection(columns=_HEALTH_COLUMNS)))
    assert len(whole) > 0  # findings to compare, not two empty tables
    _same(narrow, whole)


# --- unseen_change: the stat-only look a new app session makes before deciding to import torch -----------------


def test_unchanged_root_has_no_unseen_change_even_with_other_files(root):
    (root / "notes.txt").write_text("lr sweep")
    summarize(root)  # lists ROOT again (touching the cache folder first): the notes are seen, and are no checkpoint
    assert StatsDataset(root).unseen_change() is None


def test_a_lightning_copy_is_an_unseen_change_for_the_full_look_to_name(root):
    # last.ckpt is never cached (plan shows it once, as an alias): only the full look can say so to the app
    shutil.copy2(root / "lightning" / "epoch=2-step=4.ckpt", root / "lightning" / "last.ckpt")
    summarize(root)
    assert StatsDataset(root).unseen_change() == "lightning/last.ckpt: a checkpoint the cache does not hold"


def test_a_new_checkpoint_is_an_unseen_change(root, tmp_path):
    write_safetensors_run(tmp_path / "later", 4)
    (tmp_path / "later" / "step_000006.safetensors").rename(root / "safetensors" / "step_000006.safetensors")
    reason = StatsDataset(root).unseen_change()
    assert reason == "safetensors/step_000006.safetensors: written since ROOT was last listed"


def test_a_checkpoint_listed_but_never_read_is_an_unseen_change(root, tmp_path):
    # A summarize cut short: the file was there when ROOT was listed (older than the cache folder's last touch).
    write_safetensors_run(tmp_path / "later", 4)
    (tmp_path / "later" / "step_000006.safetensors").rename(root / "safetensors" / "step_000006.safetensors")
    StatsCache(root).ensure()
    reason = StatsDataset(root).unseen_change()
    assert reason == "safetensors/step_000006.safetensors: a checkpoint the cache does not hold"


def test_a_rewritten_or_deleted_checkpoint_is_an_unseen_change(root):
    path = root / "safetensors" / "step_000002.safetensors"
    data = StatsDataset(root)
    path.write_bytes(path.read_bytes())  # same bytes, same size: a new ctime all the same
    assert data.unseen_change() == "safetensors/step_000002.safetensors: changed"
    path.unlink()
    assert data.unseen_change() == "safetensors/step_000002.safetensors: deleted"


def test_a_file_changed_inside_a_cached_checkpoint_folder_is_an_unseen_change(tmp_path):
    from _fixtures_app import write_hf_resnet_run

    write_hf_resnet_run(tmp_path / "hf", [1])
    summarize(tmp_path)
    assert StatsDataset(tmp_path).unseen_change() is None
    config = tmp_path / "hf" / "checkpoint-1" / "config.json"
    config.write_text(config.read_text())
    assert StatsDataset(tmp_path).unseen_change() == "hf/checkpoint-1: changed"


def test_reads_come_in_run_step_checkpoint_order_without_a_sort(root, tmp_path):
    """Files are scanned in run, step, path order, so the rows need no sort; where a step is unknown (a run without
    steps) or the table has none (errors), the rows are sorted; either way, the order of a sort of every row."""
    import os
    import time

    import pyarrow.compute as pc

    from _fixtures_app import write_tiny_run

    write_tiny_run(root / "tiny", [5, 10, 40])  # listed by name step_10, step_40, step_5: not the step order
    (root / "stepless").mkdir()
    for i, name in enumerate(("init", "best", "final")):  # no step in names or metadata: ordered by position
        write_tiny_run(tmp_path / "scratch", [i], seed=i)[0].rename(root / "stepless" / f"{name}.pt")
    broken = root / "safetensors" / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")  # an errors row, no step
    os.utime(broken, (time.time() - 3600, time.time() - 3600))  # old: broken, not still being written
    summarize(root)
    data = StatsDataset(root)
    for table in TableName:
        rows = data.read(table)
        raw = data.read(table, sort=False)
        keys = [(c, "ascending", "at_start") for c in ("run", "step", "checkpoint") if c in raw.column_names]
        expected = raw.take(pc.sort_indices(raw, sort_keys=keys)) if keys and raw.num_rows else raw
        pd.testing.assert_frame_equal(rows.to_pandas(), expected.to_pandas())  # NaN equal to NaN, unlike equals
    assert data.read(TableName.ERRORS).num_rows == 1
    in_order = data.read(TableName.TENSORS, Selection(runs=("lightning", "tiny"))).to_pandas()
    steps = in_order.drop_duplicates("checkpoint")[["run", "step"]].values.tolist()  # 3 checkpoints per run
    assert steps == [["lightning", 0], ["lightning", 2], ["lightning", 4], ["tiny", 5], ["tiny", 10], ["tiny", 40]]
