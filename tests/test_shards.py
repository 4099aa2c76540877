"""Shard tasks and per-chunk DCP statistics on checkpoints written by the real libraries: a multi-chunk FSDP2
series (re-sharded from 2 to 3 ranks on its last step) and a Hugging Face ``save_pretrained`` series in 4 shards.

One task and one task per file give the same tables, row by row and bit for bit, on the local and the Dask executor;
a split tensor's statistics equal those of the tensor DCP itself assembles, and it is never assembled by us."""

from __future__ import annotations

import math
import os
import shutil
import time
import traceback
from pathlib import Path

import pytest
import torch
from _fixtures_shards import age, assert_like_assembled, assert_same_fragments, fsdp2_series, hf_sharded_series
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from ckptboard.core.cache import StatsCache
from ckptboard.core.executors import LocalExecutor
from ckptboard.core.formats.dcp import DcpReader
from ckptboard.core.load import load_stats
from ckptboard.core.merge import PARTS_DIRNAME
from ckptboard.core.stats import EXACT_PERCENTILE_NUMEL
from ckptboard.core.summarize import execute, plan, shard_tasks

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

_SPLIT = ("0.weight", "2.weight")  # 80x96 and 72x80: chunked by rows over the ranks, larger than 4,096 elements


@pytest.fixture(scope="module")
def dcp_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dcp")
    fsdp2_series(root / "run", [1, 2], world=2)
    fsdp2_series(root / "run", [3], world=3)  # the same model re-sharded: chunk boundaries move
    age(root)
    return root


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf")
    hf_sharded_series(root / "run", steps=2)
    age(root)
    return root


def _summarise(root: Path, cache: Path, executor, split: bool, spectral: str = "off"):
    report = execute(plan(root, cache_dir=cache, spectral=spectral), executor, split=split)
    assert report.ok, report.failures
    assert not (cache / PARTS_DIRNAME).exists()  # every part's results merged and removed
    return report


def test_dcp_one_task_and_one_task_per_file_give_the_same_tables(dcp_root, tmp_path):
    _summarise(dcp_root, tmp_path / "one", LocalExecutor(1), split=False)
    many = _summarise(dcp_root, tmp_path / "many", LocalExecutor(2), split=True)
    assert many.checkpoints == 3 and many.tensors == 18  # 6 tensors a checkpoint
    assert_same_fragments(tmp_path / "one", tmp_path / "many")
    tables = load_stats(dcp_root, tmp_path / "many")
    # Steps 2 and 3 have update rows for all 6 tensors; step 3's chunks (3 ranks) are read from step 2's (2 ranks).
    assert sorted(tables.updates.groupby("checkpoint").size().tolist()) == [6, 6]
    assert tables.updates["update_norm"].gt(0).all() and tables.updates["dist_from_first"].notna().all()


def test_hf_shards_one_task_and_one_task_per_file_give_the_same_tables(hf_root, tmp_path):
    _summarise(hf_root, tmp_path / "one", LocalExecutor(1), split=False)
    work = plan(hf_root, cache_dir=tmp_path / "many")
    assert [t.part.count for t in shard_tasks(work.tasks, 2, split=True)] == [4] * 8  # 2 checkpoints x 4 shards
    _summarise(hf_root, tmp_path / "many", LocalExecutor(2), split=True)
    assert_same_fragments(tmp_path / "one", tmp_path / "many")


def test_spectral_rows_of_shard_tasks_equal_one_tasks(hf_root, tmp_path):
    # Each part tags the spectral rows of its tensors with their order, so the merge puts them where one task does.
    _summarise(hf_root, tmp_path / "one", LocalExecutor(1), split=False, spectral="default")
    _summarise(hf_root, tmp_path / "many", LocalExecutor(2), split=True, spectral="default")
    assert_same_fragments(tmp_path / "one", tmp_path / "many")
    assert len(load_stats(hf_root, tmp_path / "many").spectral) > 0

def test_dask_shard_tasks_give_the_local_tables(dcp_root, hf_root, tmp_path):
    pytest.importorskip("distributed")
    from ckptboard.core.executors_dask import DaskExecutor

    with DaskExecutor(n_workers=2, dashboard_address=None) as dask:
        for name, root in (("dcp", dcp_root), ("hf", hf_root)):
            _summarise(root, tmp_path / f"{name}-one", LocalExecutor(1), split=False)
            _summarise(root, tmp_path / f"{name}-dask", dask, split=True)
            assert_same_fragments(tmp_path / f"{name}-one", tmp_path / f"{name}-dask")


def test_small_checkpoints_stay_whole_unless_asked(hf_root, tmp_path):
    work = plan(hf_root, cache_dir=tmp_path / "c")
    assert all(t.part is None for t in shard_tasks(work.tasks, 1, split=None))  # one worker: nothing to gain
    assert all(t.part is None for t in shard_tasks(work.tasks, 2, split=None))  # 230 KB < SPLIT_MIN_BYTES
    assert all(t.part is None for t in shard_tasks(work.tasks, 8, split=False))


def test_split_tensor_statistics_equal_those_of_the_assembled_tensor(dcp_root, tmp_path):
    """Against DCP's own assembly (``dcp_to_torch_save``), as :func:`assert_like_assembled` says; the update
    statistics against a checkpoint of other chunks to 1e-12 relative."""
    whole = tmp_path / "whole"
    whole.mkdir()
    for step in ("step-2", "step-3"):  # 2 ranks, then 3: step 3's chunks read step 2's blocks across its chunks
        dcp_to_torch_save(dcp_root / "run" / step, whole / f"{step}.pt")
        shutil.copytree(dcp_root / "run" / step, tmp_path / "dcp" / step)
    age(tmp_path)
    for root in (whole, tmp_path / "dcp"):
        _summarise(root, root / ".cache", LocalExecutor(1), split=False)
    a = load_stats(whole, whole / ".cache")
    b = load_stats(tmp_path / "dcp", tmp_path / "dcp" / ".cache")
    ua = a.updates[a.updates.group == "model"].set_index("name")
    ub = b.updates.set_index("name")
    for name in _SPLIT:
        for column in ("update_norm", "update_ratio", "cosine", "dist_from_first", "rel_dist_from_first"):
            assert ub.loc[name, column] == pytest.approx(ua.loc[name, column], rel=1e-12, abs=0.0), (name, column)
    ta = a.tensors[(a.tensors.group == "model") & (a.tensors.checkpoint == "step-3.pt")].set_index("name")
    tb = b.tensors[b.tensors.checkpoint == "step-3"].set_index("name")
    ha = a.histograms[(a.histograms.group == "model") & (a.histograms.checkpoint == "step-3.pt")].set_index("name")
    hb = b.histograms[b.histograms.checkpoint == "step-3"].set_index("name")
    assert_like_assembled((ta, ha), (tb, hb), _SPLIT)


def test_a_split_tensor_is_read_one_chunk_at_a_time(dcp_root, tmp_path, monkeypatch):
    """Peak memory is bounded by the largest chunk: no model tensor above the exact-percentile size is assembled, and
    no read returns more than a chunk (a spy on the real reader: every read still happens). The gradient statistics
    (:mod:`ckptboard.core.gradients`, from the optimizer's state) still read their tensors whole: not counted."""
    assembled, pieces = [], []
    materialise, read_chunk = DcpReader.materialise, DcpReader.read_chunk

    def spy_materialise(self, lazy, device):
        out = materialise(self, lazy, device)
        if not any(frame.name == "gradient_rows" for frame in traceback.extract_stack()):
            assembled.append(out.numel())
        return out

    def spy_read_chunk(self, lazy, chunk):
        out = read_chunk(self, lazy, chunk)
        pieces.append((out.numel(), math.prod(chunk.sizes)))
        return out

    monkeypatch.setattr(DcpReader, "materialise", spy_materialise)
    monkeypatch.setattr(DcpReader, "read_chunk", spy_read_chunk)
    _summarise(dcp_root, tmp_path / "c", LocalExecutor(1), split=False)
    assert assembled and max(assembled) <= EXACT_PERCENTILE_NUMEL
    # 3 checkpoints x 2 split weights: 2 + 2 + 3 chunks each, 14 reads, each of one chunk's elements
    assert len(pieces) == 14 and all(got == size for got, size in pieces)
    assert max(size for _, size in pieces) == 40 * 96  # 0.weight's rows 0-39 of 80 under 2 ranks: 3,840 elements


def _break_one_chunk(folder: Path, fqn: str, file: str) -> None:
    """Overwrite the zip signature of ``fqn``'s chunk in ``file`` (the file keeps its size: only reading it fails)."""
    reader = DcpReader(folder)
    chunk = next(c for c in reader.dcp.items[fqn].chunks if c.file == file)
    with open(folder / file, "r+b") as f:
        f.seek(chunk.offset)
        f.write(b"XXXX")


def test_a_failed_shard_fails_its_checkpoint_in_one_line_and_the_rest_loads(dcp_root, tmp_path):
    root = tmp_path / "ckpts"
    shutil.copytree(dcp_root, root)
    _break_one_chunk(root / "run" / "step-2", "model.0.weight", "__1_0.distcp")
    age(root)
    report = execute(plan(root, cache_dir=tmp_path / "c"), LocalExecutor(2), split=True)
    assert report.checkpoints == 2 and [f.relpath for f in report.failures] == ["run/step-2"]
    failure = report.failures[0]
    assert failure.error == "CorruptCheckpointError" and "model.0.weight" in failure.message
    assert "\n" not in failure.message
    tables = load_stats(root, tmp_path / "c")
    assert sorted(tables.checkpoints.checkpoint) == ["run/step-1", "run/step-3"]
    assert tables.errors.checkpoint.tolist() == ["run/step-2"]  # recorded: a re-run does not read it again
    assert not (tmp_path / "c" / PARTS_DIRNAME).exists()
    again = execute(plan(root, cache_dir=tmp_path / "c"), LocalExecutor(2), split=True)
    assert again.computed == 0 and again.cached == 3


def test_parts_a_dead_client_left_are_pruned_after_an_hour(tmp_path):
    from ckptboard.core.merge import parts_dir

    cache = StatsCache(tmp_path, tmp_path / "c")
    old, fresh = parts_dir(cache.dir, cache.stem("run/step-1")), parts_dir(cache.dir, cache.stem("run/step-2"))
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "tensors-0.parquet").write_bytes(b"")
    age(old, 2 * 3600)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    cache.prune([])
    assert not old.exists() and fresh.exists()  # another summarize may be merging that one right now
