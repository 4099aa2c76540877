"""The dask executor on its own: receipts as tasks finish, a lost task resubmitted once, clear usage errors."""

from __future__ import annotations

import importlib
import sys

import pytest

pytest.importorskip("distributed")

from _fixtures_dask import SquareTask, attempts, die_on, raise_on, square  # noqa: E402

from ckptboard.core import executors_dask  # noqa: E402
from ckptboard.core.errors import UsageError  # noqa: E402
from ckptboard.core.executors import Executor  # noqa: E402
from ckptboard.core.executors_dask import DaskExecutor  # noqa: E402
from ckptboard.dashboard.cli import main  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def executor():
    """One 2-worker LocalCluster (started by the executor itself) shared by this module's tests."""
    with DaskExecutor(n_workers=2, dashboard_address="127.0.0.1:0") as ex:
        yield ex


def test_is_an_executor():
    assert isinstance(DaskExecutor(n_workers=1), Executor)


def test_every_task_gives_one_receipt(executor, tmp_path):
    tasks = [SquareTask(n, str(tmp_path)) for n in range(8)]
    receipts = list(executor.map_unordered(square, tasks))
    # Completion order is the cluster's; the set is not.
    assert sorted(receipts) == [("ok", n * n) for n in range(8)]
    assert [attempts(tmp_path, n) for n in range(8)] == [1] * 8


def test_no_tasks_starts_nothing():
    ex = DaskExecutor(n_workers=1)
    assert list(ex.map_unordered(square, [])) == []
    assert ex.dashboard_link is None  # never started


def test_dying_worker_is_reported_and_retried_once_others_finish(executor, tmp_path):
    tasks = [SquareTask(n, str(tmp_path)) for n in range(6)]
    receipts = list(executor.map_unordered(die_on(3), tasks))
    failed = [r for r in receipts if r[0] == "failed"]
    assert sorted(r for r in receipts if r[0] == "ok") == [("ok", n * n) for n in (0, 1, 2, 4, 5)]
    assert len(failed) == 1 and failed[0][1] == 3
    assert "worker running it died (attempt 2 of 2" in failed[0][2]
    assert attempts(tmp_path, 3) == 2  # the first run and exactly one retry


def test_raising_function_is_retried_once_then_reported(executor, tmp_path):
    tasks = [SquareTask(n, str(tmp_path)) for n in range(4)]
    receipts = list(executor.map_unordered(raise_on(2), tasks))
    assert sorted(r for r in receipts if r[0] == "ok") == [("ok", n * n) for n in (0, 1, 3)]
    (failed,) = [r for r in receipts if r[0] == "failed"]
    assert failed[1] == 2
    assert "RuntimeError: boom on 2" in failed[2]
    assert attempts(tmp_path, 2) == 2


def test_explicit_scheduler_address_uses_that_cluster(tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster:
        ex = DaskExecutor(cluster.scheduler_address)
        receipts = list(ex.map_unordered(square, [SquareTask(n, str(tmp_path)) for n in range(3)]))
        assert sorted(receipts) == [("ok", 0), ("ok", 1), ("ok", 4)]
        assert ex.dashboard_link is None  # disconnected after the map it connected for
        assert len(cluster.workers) == 1  # the executor neither closed nor scaled a cluster it did not start


def test_on_start_sees_the_dashboard_link():
    seen = []
    with DaskExecutor(n_workers=1, dashboard_address="127.0.0.1:0",
                      on_start=lambda ex: seen.append(ex.dashboard_link)):
        pass
    assert len(seen) == 1 and seen[0].startswith("http://127.0.0.1:")


def test_without_dask_one_clear_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # what `import distributed` sees when not installed
    monkeypatch.setitem(sys.modules, "dask", None)
    module = importlib.reload(executors_dask)  # the module itself imports without dask
    with pytest.raises(UsageError, match=r"--executor dask .* not installed: pip install ckptboard\[dask\]"):
        module.DaskExecutor()


def test_cli_without_dask_prints_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert main(["summarize", str(tmp_path), "--executor", "dask"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("UsageError: --executor dask needs Dask's distributed scheduler, which is not installed: "
                       "pip install ckptboard[dask]")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_workers": 0}, r"--workers must be at least 1, got 0"),
        ({"scheduler": " "}, r"--scheduler: empty address"),
        ({"scheduler": "tcp://127.0.0.1:8786", "n_workers": 2}, r"--workers applies to the LocalCluster"),
    ],
)
def test_bad_options_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        DaskExecutor(**kwargs)


def test_unreachable_scheduler_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(executors_dask, "_CONNECT_TIMEOUT_S", 1)
    ex = DaskExecutor("tcp://127.0.0.1:9")  # the discard port: nothing listens there
    with pytest.raises(UsageError, match=r"--scheduler tcp://127.0.0.1:9: cannot reach a Dask scheduler"):
        ex.start()
