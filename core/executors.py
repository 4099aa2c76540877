"""The executor seam: where checkpoint tasks run. ``summarize`` plans tasks, an executor runs them.

An :class:`Executor` maps a picklable function over picklable tasks and yields the function's small receipts as
they finish, in any order. A task function reports its own failures in its receipt; an executor only has to deal
with tasks it *lost* (a worker process died): it retries each once, then yields ``task.failed(problem)``. The
function writes its result (a cache fragment) itself, so nothing big ever travels back to the client.

:class:`LocalExecutor` runs worker processes under :class:`~ckptboard.core.limits.WorkerLimits`
(:mod:`ckptboard.core.worker_pool`): a task past its time is killed and recorded, a task that kills its worker twice is
recorded, and neither takes the other tasks or the calling process with it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

from ckptboard.core.errors import UsageError
from ckptboard.core.limits import WorkerLimits
from ckptboard.core.worker_pool import run_supervised

__all__ = ["FailableTask", "Executor", "LocalExecutor", "default_workers", "WORKER_MEMORY_BYTES"]

R = TypeVar("R")

# What one summarising worker may need: torch itself (~300 MB resident) plus the statistics' bounded working set
# (256 MiB) plus slack. The default worker count never asks for more than the memory available.
WORKER_MEMORY_BYTES = 1 << 30



@runtime_checkable
class FailableTask(Protocol):
    """A task an executor can turn into a failure receipt when it loses it."""

    def failed(self, problem: str, error: str = "WorkerLost", record: bool = False) -> Any: ...


@runtime_checkable
class Executor(Protocol):
    """Runs ``fn`` over ``tasks``; yields one receipt per task, in completion order."""

    def map_unordered(self, fn: Callable[[Any], R], tasks: Iterable[FailableTask]) -> Iterator[R]: ...


class LocalExecutor:
    """Runs tasks in this process (``workers=1``) or in ``workers`` worker processes under ``limits``.

    ``isolate`` runs even a single worker in its own process (the dashboard, the CLI): a hostile file then ends as a
    recorded failure, whatever its worker dies of. ``limits`` defaults to the environment's, else the defaults.
    """

    def __init__(self, workers: int = 1, start_method: str | None = None, *, limits: WorkerLimits | None = None,
                 isolate: bool = False):
        if int(workers) < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self.workers = int(workers)
        self.start_method = start_method  # None: chosen when the pool starts (see _start_method)
        self.limits = limits
        self.isolate = isolate

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers}, isolate={self.isolate})"

    @property
    def parallelism(self) -> int:
        """How many tasks run at once (``summarize`` splits a large checkpoint into shard tasks only when > 1)."""
        return self.workers

    def map_unordered(self, fn: Callable[[Any], R], tasks: Iterable[FailableTask]) -> Iterator[R]:
        tasks = list(tasks)
        if not tasks:
            return
        if not self.isolate and (self.workers == 1 or len(tasks) <= 1):
            for task in tasks:
                yield fn(task)
            return
        limits = self.limits if self.limits is not None else WorkerLimits.from_options()
        context = multiprocessing.get_context(self.start_method or _start_method())
        yield from run_supervised(fn, tasks, min(self.workers, len(tasks)), limits, context,
                                  initializer=_one_thread_per_worker)


def _start_method() -> str:
    """``fork`` from a single-threaded process, else ``forkserver`` (``spawn`` where there is none).

    A spawned worker pays for importing torch and starting numba (2-3 s here: more than a few GB of statistics take);
    a forked one inherits them for free (1 vs 2 workers on 4 GB: 0.5x with spawn, 1.8x with fork). Forking is unsafe
    only while other threads may hold locks (the Streamlit app, a Dask client); then workers are forked from a fork
    server, a single-threaded process started once that imports the task's modules (torch) once for all of them.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    if "forkserver" in methods:
        multiprocessing.get_context("forkserver").set_forkserver_preload(["ckptboard.core.task"])
        return "forkserver"
    return "spawn"


def _one_thread_per_worker() -> None:
    """N workers share N cores: torch's own thread pool in each would oversubscribe them (as Dask's workers avoid)."""
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = "1"  # read when the task imports torch; importing it here costs seconds
    else:
        torch.set_num_threads(1)


def default_workers(memory_per_worker: int = WORKER_MEMORY_BYTES) -> int:
    """The machine's usable cores, bounded by the memory available for one worker each."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    available = _available_memory()
    by_memory = max(1, available // memory_per_worker) if available else cores
    return max(1, min(cores, by_memory))


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None
