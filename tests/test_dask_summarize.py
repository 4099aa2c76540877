"""The sample series summarised on Dask: the same tables as the local executor, the CLI against a LocalCluster and
an explicit scheduler address, a corrupt file and a dying worker reported per file while the rest is summarised."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")

from _fixtures_dask import KillMidWriteExecutor  # noqa: E402

from ckptboard.core.fragment import TMP_PREFIX  # noqa: E402
from ckptboard.core.cache import StatsCache  # noqa: E402
from ckptboard.core.executors import LocalExecutor  # noqa: E402
from ckptboard.core.executors_dask import SCHEDULER_CONFIG, DaskExecutor  # noqa: E402
from ckptboard.core.summarize import summarize  # noqa: E402
from ckptboard.core.load import load_stats  # noqa: E402
from ckptboard.dashboard.cli import main  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SAMPLES = Path(__file__).resolve().parents[1] / "sample_ckpts"
RUNS = ("adamw_lr1e-2", "adamw_lr1e-3", "sgd_safetensors")
N_HALF = 24  # the first 8 checkpoints of each of the 3 runs: every format, update and event path, half the time
N_SHORT = 9  # the first 3 checkpoints of each run: enough for the CLI and failure paths
_LIST_COLUMNS = ("lo", "hi", "counts")


def _step(path: Path) -> int:
    return int(re.findall(r"\d+", path.stem)[-1])  # epoch=1-step=60 -> 60, checkpoint_000060 -> 60


def _copy_series(folder: Path, per_run: int | None = None) -> Path:
    """A copy of the committed sample series, old enough not to look like files still being written."""
    an_hour_ago = time.time() - 3600
    for run in RUNS:
        (folder / run).mkdir(parents=True)
        for path in sorted((SAMPLES / run).iterdir(), key=_step)[:per_run]:
            shutil.copy(path, folder / run / path.name)
            os.utime(folder / run / path.name, (an_hour_ago, an_hour_ago))
    return folder


@pytest.fixture
def half_series(tmp_path) -> Path:
    return _copy_series(tmp_path / "ckpts", per_run=8)


@pytest.fixture
def short_series(tmp_path) -> Path:
    return _copy_series(tmp_path / "ckpts", per_run=3)


@pytest.fixture(scope="module")
def scheduler_address():
    """A 2-worker LocalCluster started by the test, as `dask scheduler` + `dask worker` would be, with the scheduler
    settings ckptboard advises (a worker death fails its task at once; ckptboard resubmits it once)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(SCHEDULER_CONFIG), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
    ) as cluster:
        yield cluster.scheduler_address


def _assert_same_tables(a, b) -> None:
    for name in ("checkpoints", "tensors", "histograms", "updates", "batchnorm", "events", "errors"):
        left, right = getattr(a, name), getattr(b, name)
        assert list(left.columns) == list(right.columns), name
        assert len(left) == len(right), name
        lists = [c for c in _LIST_COLUMNS if c in left.columns]
        for column in lists:
            for x, y in zip(left[column], right[column]):
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-6, err_msg=name)
        pd.testing.assert_frame_equal(left.drop(columns=lists), right.drop(columns=lists), check_exact=False,
                                      rtol=1e-6, obj=name)


def test_dask_local_cluster_gives_the_local_tables(half_series, tmp_path, scheduler_address):
    local = summarize(half_series, cache_dir=tmp_path / "local", executor=LocalExecutor(1))
    wire_bytes = []  # what came back over the wire, per task: the progress callback sees each receipt
    dask = summarize(half_series, cache_dir=tmp_path / "dask", executor=DaskExecutor(scheduler_address),
                     progress=lambda receipt: wire_bytes.append(len(pickle.dumps(receipt))))
    assert (local.computed, dask.computed) == (N_HALF, N_HALF)
    # One small receipt per checkpoint, never statistics or tensors (a checkpoint here holds ~60 KB of tensors).
    assert len(wire_bytes) == N_HALF and max(wire_bytes) < 1000
    assert local.ok and dask.ok
    a, b = load_stats(half_series, tmp_path / "local"), load_stats(half_series, tmp_path / "dask")
    # 21 of the 24 checkpoints have a previous one in their run: update rows for all of them.
    assert len(a.checkpoints) == N_HALF and set(a.updates["checkpoint"]) == set(a.checkpoints["checkpoint"]) - {
        f"{run}/{name}" for run, name in zip(RUNS, ("epoch=0-step=30.ckpt", "epoch=0-step=30.ckpt",
                                                    "checkpoint_000030.safetensors"))}
    _assert_same_tables(a, b)


def test_cli_against_an_explicit_scheduler_address(short_series, tmp_path, scheduler_address, capsys):
    cache = tmp_path / "cache"
    rc = main(["summarize", str(short_series), "--executor", "dask", "--scheduler", scheduler_address,
               "--cache-dir", str(cache)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Dask dashboard: http://127.0.0.1:" in err
    assert out.startswith(f"{N_SHORT} checkpoints (0 from cache)")
    assert len(load_stats(short_series, cache).checkpoints) == N_SHORT


def test_cli_starts_and_stops_its_own_local_cluster(short_series, tmp_path, capsys):
    rc = main(["summarize", str(short_series), "--executor", "dask", "--workers", "1",
               "--cache-dir", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Dask dashboard: http://" in err
    assert out.startswith(f"{N_SHORT} checkpoints (0 from cache)")


def test_cli_export_on_dask(short_series, tmp_path, scheduler_address, capsys):
    out_dir = tmp_path / "out"
    rc = main(["export", str(short_series), "--out", str(out_dir), "--executor", "dask",
               "--scheduler", scheduler_address, "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    assert len(pd.read_csv(out_dir / "checkpoints.csv")) == N_SHORT


def test_cli_scheduler_without_dask_executor_is_a_usage_error(short_series, capsys):
    assert main(["summarize", str(short_series), "--scheduler", "tcp://127.0.0.1:8786"]) == 1
    assert "UsageError: --scheduler tcp://127.0.0.1:8786 needs --executor dask" in capsys.readouterr().err


def test_cli_corrupt_file_is_reported_and_the_rest_summarised(short_series, tmp_path, scheduler_address, capsys):
    series = short_series
    victim = "adamw_lr1e-3/epoch=1-step=60.ckpt"
    path = series / victim
    stat = path.stat()
    path.write_bytes(path.read_bytes()[: stat.st_size // 2])  # truncated, as by a full disk
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # an old file: broken, not still being written
    cache = tmp_path / "cache"
    rc = main(["summarize", str(series), "--executor", "dask", "--scheduler", scheduler_address,
               "--cache-dir", str(cache)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert f"FAILED {victim}: CorruptCheckpointError: " in err
    assert out.startswith(f"{N_SHORT - 1} checkpoints") and "1 failed" in out
    tables = load_stats(series, cache)
    assert victim not in set(tables.checkpoints["checkpoint"]) and len(tables.checkpoints) == N_SHORT - 1
    assert list(tables.errors["checkpoint"]) == [victim]


def test_worker_killed_mid_write_is_retried_once_and_leaves_no_fragment(short_series, tmp_path, scheduler_address):
    series = short_series
    victim = "sgd_safetensors/checkpoint_000060.safetensors"
    markers, cache = tmp_path / "attempts", tmp_path / "cache"
    markers.mkdir()
    executor = KillMidWriteExecutor(DaskExecutor(scheduler_address), victim, str(markers))
    report = summarize(series, cache_dir=cache, executor=executor)
    assert len(list(markers.iterdir())) == 2  # the first attempt and exactly one retry
    assert [(f.relpath, f.error) for f in report.failures] == [(victim, "WorkerLost")]
    assert "worker running it died (attempt 2 of 2" in report.failures[0].message
    assert report.checkpoints == N_SHORT - 1
    # Both attempts died between the temp file and the rename: temp files, never the fragment itself.
    assert not StatsCache(series, cache).fragment_path(victim).exists()
    assert len(list(cache.rglob(f"{TMP_PREFIX}*"))) == 2  # in the folder of the first table written
    tables = load_stats(series, cache)
    assert len(tables.checkpoints) == N_SHORT - 1 and tables.errors.empty
    # Nothing was cached for the lost file: the next run summarises it.
    again = summarize(series, cache_dir=cache, executor=LocalExecutor(1))
    assert (again.computed, again.cached, again.ok) == (1, N_SHORT - 1, True)
