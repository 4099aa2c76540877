"""The executor seam: in-process and process-pool runs, lost workers retried once, the default worker count."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckptboard.core.errors import UsageError
from ckptboard.core.executors import Executor, LocalExecutor, default_workers


@dataclass
class _Job:
    """A picklable task: ``die_times`` first attempts kill their worker (counted in files under ``marks``)."""

    n: int
    marks: str = ""
    die_times: int = 0
    seconds: float = 0.0

    def failed(self, problem: str, error: str = "WorkerLost", record: bool = False) -> tuple:
        return ("failed", self.n, problem)


def _square(job: _Job) -> tuple:
    time.sleep(job.seconds)
    if job.die_times:
        marks = Path(job.marks)
        attempt = len(list(marks.glob(f"{job.n}-*")))
        (marks / f"{job.n}-{attempt}").touch()
        if attempt < job.die_times:
            os._exit(3)  # a worker that dies (OOM killer, segfault) rather than raising
    return ("ok", job.n * job.n, os.getpid())


def test_local_executor_in_process_runs_tasks_in_order():
    executor = LocalExecutor(1)
    assert isinstance(executor, Executor)
    receipts = list(executor.map_unordered(_square, [_Job(1), _Job(2), _Job(3)]))
    assert [r[:2] for r in receipts] == [("ok", 1), ("ok", 4), ("ok", 9)]
    assert {r[2] for r in receipts} == {os.getpid()}


def test_local_executor_pool_runs_tasks_in_other_processes():
    receipts = list(LocalExecutor(2).map_unordered(_square, [_Job(n) for n in range(4)]))
    assert sorted(r[1] for r in receipts) == [0, 1, 4, 9]  # 0², 1², 2², 3²
    assert os.getpid() not in {r[2] for r in receipts}


def test_local_executor_retries_a_lost_task_once(tmp_path):
    jobs = [_Job(2, str(tmp_path), die_times=1), _Job(3)]
    receipts = sorted(LocalExecutor(2).map_unordered(_square, jobs), key=lambda r: r[1])
    assert [r[:2] for r in receipts] == [("ok", 4), ("ok", 9)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2-0", "2-1"]  # died once, then succeeded


def test_local_executor_reports_a_task_lost_twice_as_failed(tmp_path):
    jobs = [_Job(5, str(tmp_path), die_times=2), _Job(3)]
    receipts = list(LocalExecutor(2).map_unordered(_square, jobs))
    failed = [r for r in receipts if r[0] == "failed"]
    assert len(receipts) == 2
    assert len(failed) == 1 and failed[0][1] == 5
    assert "worker process died twice" in failed[0][2]


def test_tasks_lost_beside_a_dying_worker_are_retried_alone_and_succeed(tmp_path):
    # Job 5 kills its worker on every attempt; its death breaks the pool under the queued jobs 1-4 too.
    jobs = [_Job(5, str(tmp_path), die_times=99)] + [_Job(n, seconds=1.0) for n in (1, 2, 3, 4)]
    receipts = list(LocalExecutor(2).map_unordered(_square, jobs))
    assert sorted(r[:2] for r in receipts if r[0] == "ok") == [("ok", 1), ("ok", 4), ("ok", 9), ("ok", 16)]
    assert [r[:2] for r in receipts if r[0] == "failed"] == [("failed", 5)]
    assert len(list(tmp_path.iterdir())) == 2  # job 5: the first attempt and one retry


def test_local_executor_rejects_zero_workers():
    with pytest.raises(UsageError, match="--workers must be at least 1, got 0"):
        LocalExecutor(0)


def test_default_workers_bounded_by_cores_and_memory():
    cores = len(os.sched_getaffinity(0))
    assert 1 <= default_workers() <= cores
    assert default_workers(memory_per_worker=1 << 60) == 1  # no machine has an exbibyte free: memory decides
