"""Compacted tables (``core.compact``): a run's fragments copied into one file per table are read in place of
theirs, giving the very rows the fragments give, and never a stale or deleted checkpoint's."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from _fixtures_runs import age, write_lightning_run, write_safetensors_run

from ckptboard.core.compact import (
    COMPACT_DIRNAME,
    COMPACT_MIN,
    COMPACTED_TABLES,
    FragmentVersion,
    compact_cache,
    compact_if_due,
    compact_run,
    compacted_files,
    due,
)
from ckptboard.core.commit_index import INDEX_NAME
from ckptboard.core.dataset import Selection, StatsDataset
from ckptboard.core.schema import TableName
from ckptboard.core.summarize import summarize

SELECTIONS = [
    Selection(),
    Selection(runs=("a",)),
    Selection(steps=(2, 6)),
    Selection(names=("fc.weight", "bn.running_var")),
    Selection(modules=("bn",)),
    Selection(columns=("run", "checkpoint", "name", "norm", "update_norm")),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Two summarised runs: ``a`` (6 Lightning checkpoints: tensors, histograms, updates, BatchNorm, training
    scalars) and ``b`` (5 safetensors files); too few for ``summarize`` to compact them itself."""
    root = tmp_path_factory.mktemp("compact") / "runs"
    write_lightning_run(root / "a", 6, seed=0)
    write_safetensors_run(root / "b", 5, seed=1)
    summarize(root)
    assert compacted_files(root / ".ckptboard") == {}  # 6 and 5 < COMPACT_MIN
    return root


@pytest.fixture
def root(template, tmp_path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(template, copy)
    return copy


def _fragments_only(root: Path, tmp_path: Path) -> StatsDataset:
    """The same cache without its compacted files: what every read must equal."""
    cache = tmp_path / "fragments-only"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(root / ".ckptboard", cache)
    shutil.rmtree(cache / COMPACT_DIRNAME, ignore_errors=True)
    return StatsDataset(root, cache)


def _rows(table) -> list:
    """A table's rows with NaN made comparable (Arrow's ``equals`` counts NaN unequal to itself)."""
    def plain(value):
        if isinstance(value, float) and math.isnan(value):
            return "NaN"
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return [{k: plain(v) for k, v in row.items()} for row in table.to_pylist()]


def _assert_same_reads(compacted: StatsDataset, plain: StatsDataset) -> None:
    for table in TableName:
        for selection in SELECTIONS:
            got, want = compacted.read(table, selection), plain.read(table, selection)
            assert got.schema == want.schema and _rows(got) == _rows(want), (table, selection)


def test_compacted_reads_equal_the_fragments_reads(root, tmp_path):
    assert compact_cache(root / ".ckptboard", minimum=2) == ["a", "b"]
    files = compacted_files(root / ".ckptboard")
    assert {key for key in files} == {(t, r) for t in COMPACTED_TABLES for r in ("a", "b")}
    assert len(files[(TableName.TENSORS, "a")].versions) == 6
    dataset = StatsDataset(root)
    assert dataset.read(TableName.UPDATES).num_rows > 0 and dataset.read(TableName.BATCHNORM).num_rows > 0
    _assert_same_reads(dataset, _fragments_only(root, tmp_path))


def test_reads_come_from_the_compacted_file(root):
    before = {t: StatsDataset(root).read(t) for t in COMPACTED_TABLES}
    compact_cache(root / ".ckptboard", minimum=2)
    for table in COMPACTED_TABLES:  # the fragments' own table files gone: the rows are the compacted file's
        for path in (root / ".ckptboard" / str(table)).glob("*.parquet"):
            path.unlink()
    after = StatsDataset(root)
    for table in COMPACTED_TABLES:
        assert _rows(after.read(table)) == _rows(before[table]), table


def test_a_checkpoint_summarised_again_is_read_from_its_own_files(root, tmp_path):
    compact_cache(root / ".ckptboard", minimum=2)
    path = sorted((root / "b").glob("*.safetensors"))[2]
    old = StatsDataset(root).read(TableName.TENSORS, Selection(checkpoints=(f"b/{path.name}",)))
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({k: v * 3 if v.is_floating_point() else v for k, v in tensors.items()}, path)  # rewritten in place
    age(path, 100.0)
    report = summarize(root)
    assert report.computed >= 1
    dataset = StatsDataset(root)
    new = dataset.read(TableName.TENSORS, Selection(checkpoints=(f"b/{path.name}",)))
    weight = new.to_pandas().set_index("name")["norm"]
    assert weight["fc.weight"] == pytest.approx(3 * old.to_pandas().set_index("name")["norm"]["fc.weight"])
    _assert_same_reads(dataset, _fragments_only(root, tmp_path))


def test_a_deleted_checkpoint_is_not_read(root, tmp_path):
    compact_cache(root / ".ckptboard", minimum=2)
    gone = sorted((root / "a").glob("*.ckpt"))[3]
    gone.unlink()
    summarize(root)  # prunes its fragment; the compacted file still holds its rows
    dataset = StatsDataset(root)
    assert f"a/{gone.name}" not in set(dataset.read(TableName.TENSORS).column("checkpoint").to_pylist())
    _assert_same_reads(dataset, _fragments_only(root, tmp_path))


@pytest.mark.filterwarnings("error")  # passed over without a word: it is a copy, the fragments are all there
def test_an_unreadable_compacted_file_is_passed_over(root, tmp_path):
    compact_cache(root / ".ckptboard", minimum=2)
    dataset = StatsDataset(root)
    dataset.read(TableName.UPDATES)  # the compacted files' footers are read now
    for compacted in compacted_files(root / ".ckptboard").values():
        compacted.path.write_bytes(b"PAR1 not a parquet file any more")
    _assert_same_reads(dataset, _fragments_only(root, tmp_path))  # read before they broke: falls back on read
    _assert_same_reads(StatsDataset(root), _fragments_only(root, tmp_path))  # read after: not listed at all


def test_a_fragment_that_moves_while_it_is_copied_is_left_to_its_own_files(root, tmp_path):
    commits = sorted((root / ".ckptboard" / "checkpoints").glob("*.parquet"))
    listed = [FragmentVersion(p.stem, "", p.stat().st_mtime_ns) for p in commits if p.name.startswith("a_")]
    assert len(listed) == 6
    stale = [*listed[:-1], FragmentVersion(listed[-1].stem, "", listed[-1].written_ns - 1)]  # rewritten since
    assert compact_run(root / ".ckptboard", "a", stale) == []
    assert compacted_files(root / ".ckptboard") == {}
    assert not list((root / ".ckptboard" / COMPACT_DIRNAME).glob("*/.tmp-*"))  # no temp file left behind
    _assert_same_reads(StatsDataset(root), _fragments_only(root, tmp_path))


def test_a_run_is_compacted_again_when_its_new_fragments_outnumber_the_covered():
    listed = [FragmentVersion(f"s{i}", f"c{i}", 1) for i in range(80)]
    assert not due(listed[:31], None)  # 31 < COMPACT_MIN (32)
    assert due(listed[:32], None)
    from ckptboard.core.compact import Compacted

    covered = Compacted(Path("x"), TableName.TENSORS, "r", {f.stem: f.written_ns for f in listed[:40]})
    assert not due(listed[:79], covered)  # 39 new < max(32, 40 covered)
    assert due(listed[:80], covered)  # 40 new >= 40 covered: each fragment is copied about twice in all
    rewritten = [FragmentVersion(f.stem, f.relpath, 2) for f in listed[:40]]
    assert due(rewritten, covered)  # every fragment summarised again: none covered at its version


def test_summarize_compacts_a_run_of_compact_min_checkpoints(tmp_path):
    root = tmp_path / "runs"
    write_safetensors_run(root / "long", COMPACT_MIN, seed=3)
    summarize(root)
    first = compacted_files(root / ".ckptboard")[(TableName.TENSORS, "long")]
    assert len(first.versions) == COMPACT_MIN
    assert summarize(root).computed == 0
    write_safetensors_run(tmp_path / "more", COMPACT_MIN + 1, seed=3)
    newest = sorted((tmp_path / "more").glob("*.safetensors"))[-1]
    shutil.copy2(newest, root / "long" / newest.name)  # one new checkpoint: 1 fragment not covered, 32 covered
    assert summarize(root).computed == 1
    assert compacted_files(root / ".ckptboard")[(TableName.TENSORS, "long")].path == first.path  # not rewritten
    dataset = StatsDataset(root)
    # TinyNet: 6 parameters (embed, fc weight and bias, bn weight and bias, head) and 3 BatchNorm buffers
    assert dataset.read(TableName.TENSORS).num_rows == (COMPACT_MIN + 1) * 9

    # A cache summarised before compaction existed (no compact folder): an unchanged re-run compacts it once.
    shutil.rmtree(root / ".ckptboard" / COMPACT_DIRNAME)
    assert summarize(root).computed == 0
    again = compacted_files(root / ".ckptboard")[(TableName.TENSORS, "long")]
    assert len(again.versions) == COMPACT_MIN + 1
    assert summarize(root).computed == 0
    assert compacted_files(root / ".ckptboard")[(TableName.TENSORS, "long")].path == again.path


def _index_and_entries(dataset: StatsDataset):
    return _rows(dataset.read(TableName.CHECKPOINTS)), [(e.stem, e.relpath, e.run, e.step, e.identity, e.written_ns)
                                                        for e in dataset._entries]


def test_the_commit_index_gives_the_records_the_files_give(root, tmp_path):
    compact_if_due(root / ".ckptboard", changed=True, minimum=2)
    assert (root / ".ckptboard" / COMPACT_DIRNAME / INDEX_NAME).exists()
    plain = _fragments_only(root, tmp_path)
    assert _index_and_entries(StatsDataset(root)) == _index_and_entries(plain)

    # Taken from the copy: a commit record made unreadable in place, its mtime kept, is still read (from the copy).
    commit = sorted((root / ".ckptboard" / "checkpoints").glob("a_*.parquet"))[1]
    mtime_ns = commit.stat().st_mtime_ns
    commit.write_bytes(b"not parquet")
    os.utime(commit, ns=(mtime_ns, mtime_ns))
    assert _index_and_entries(StatsDataset(root)) == _index_and_entries(plain)


def test_a_commit_record_newer_than_the_index_is_read_from_its_file(root, tmp_path):
    assert summarize(root).computed == 11  # a copied folder is summarised again (new inodes): 6 + 5 checkpoints
    compact_if_due(root / ".ckptboard", changed=True, minimum=2)
    stale = tmp_path / "index-before.parquet"
    shutil.copy2(root / ".ckptboard" / COMPACT_DIRNAME / INDEX_NAME, stale)
    path = sorted((root / "b").glob("*.safetensors"))[1]
    from safetensors.torch import load_file, save_file

    save_file({k: v * 2 if v.is_floating_point() else v for k, v in load_file(path).items()}, path)
    age(path, 50.0)
    assert summarize(root).computed == 2  # it, and the next checkpoint (its updates are against it)
    shutil.copy2(stale, root / ".ckptboard" / COMPACT_DIRNAME / INDEX_NAME)  # the copy from before the rewrite
    assert _index_and_entries(StatsDataset(root)) == _index_and_entries(_fragments_only(root, tmp_path))


def test_the_cli_says_when_it_compacts_a_run(tmp_path, capsys):
    from ckptboard.dashboard.cli import main

    root = tmp_path / "runs"
    write_safetensors_run(root / "long", COMPACT_MIN, seed=4)
    assert main(["summarize", str(root)]) == 0
    err = capsys.readouterr().err
    assert f"compacting run 'long': {COMPACT_MIN} checkpoints' tables into one file each" in err
    assert main(["summarize", str(root)]) == 0  # nothing new: nothing compacted, nothing said
    assert "compacting" not in capsys.readouterr().err


def test_the_app_says_it_compacted_a_run(tmp_path):
    from _fixtures_app import app_test

    root = tmp_path / "runs"
    write_safetensors_run(root / "long", COMPACT_MIN, seed=5)
    at = app_test(str(root))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    label = at.status[0].label
    assert label.startswith(f"Read {COMPACT_MIN} new checkpoint(s)") and label.endswith(" · compacted 'long'")
    assert (TableName.TENSORS, "long") in compacted_files(root / ".ckptboard")
