"""The executor seam: where checkpoint tasks run. ``summarize`` plans tasks, an executor runs them.

An :class:`Executor` maps a picklable function over picklable tasks and yields the function's small receipts as
they finish, in any order. A task function reports its own failures in its receipt; an executor only has to deal
with tasks it *lost* (a worker process died): it retries each once, then yields ``task.failed(problem)``. The
function writes its result (a cache fragment) itself, so nothing big ever travels back to the client.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar, runtime_checkable

from ckptboard.core.errors import UsageError

__all__ = ["FailableTask", "Executor", "LocalExecutor", "default_workers", "WORKER_MEMORY_BYTES"]

R = TypeVar("R")

# What one summarising worker may need: torch itself (~300 MB resident) plus the statistics' bounded working set
# (256 MiB) plus slack. The default worker count never asks for more than the memory available.
WORKER_MEMORY_BYTES = 1 << 30



@runtime_checkable
class FailableTask(Protocol):
    """A task an executor can turn into a failure receipt when it loses it."""

    def failed(self, problem: str) -> Any: ...


@runtime_checkable
class Executor(Protocol):
    """Runs ``fn`` over ``tasks``; yields one receipt per task, in completion order."""

    def map_unordered(self, fn: Callable[[Any], R], tasks: Iterable[FailableTask]) -> Iterator[R]: ...


class LocalExecutor:
    """Runs tasks in this process (``workers=1``) or in a pool of fresh ``spawn`` processes (``workers>1``)."""

    def __init__(self, workers: int = 1, start_method: str | None = None):
        if int(workers) < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self.workers = int(workers)
        self.start_method = start_method  # None: chosen when the pool starts (see _start_method)

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers})"

    def map_unordered(self, fn: Callable[[Any], R], tasks: Iterable[FailableTask]) -> Iterator[R]:
        tasks = list(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield fn(task)
            return
        yield from self._pool_map(fn, tasks)

    def _pool_map(self, fn: Callable[[Any], R], tasks: list[FailableTask]) -> Iterator[R]:
        context = multiprocessing.get_context(self.start_method or _start_method())
        lost: list[tuple[int, BaseException]] = []
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=context,
                                 initializer=_one_thread_per_worker) as pool:
            yield from _collect({pool.submit(fn, task): i for i, task in enumerate(tasks)}, tasks, lost)
        # A dead worker breaks the whole pool, so every unfinished task is lost with it. Retry each lost task once
        # in a pool of its own: only the task that kills its worker is lost again, and only it is reported.
        for start in range(0, len(lost), self.workers):
            batch = [i for i, _ in lost[start:start + self.workers]]
            pools = [ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_one_thread_per_worker)
                     for _ in batch]
            try:
                again: list[tuple[int, BaseException]] = []
                yield from _collect({pool.submit(fn, tasks[i]): i for pool, i in zip(pools, batch)}, tasks, again)
                for i, error in again:
                    yield tasks[i].failed(f"worker process died twice ({error or 'BrokenProcessPool'})")
            finally:
                for pool in pools:
                    pool.shutdown(wait=True, cancel_futures=True)


def _start_method() -> str:
    """``fork`` from a single-threaded process, else ``spawn``.

    A spawned worker pays for importing torch and starting numba (2-3 s here: more than a few GB of statistics take);
    a forked one inherits them for free (1 vs 2 workers on 4 GB: 0.5x with spawn, 1.8x with fork). Forking is unsafe
    only while other threads may hold locks (the Streamlit app, a Dask client), so then workers are spawned.
    """
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _one_thread_per_worker() -> None:
    """N workers share N cores: torch's own thread pool in each would oversubscribe them (as Dask's workers avoid)."""
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = "1"  # read when the task imports torch; importing it here costs seconds
    else:
        torch.set_num_threads(1)


def _collect(futures: dict[Future, int], tasks: list[FailableTask], lost: list[tuple[int, BaseException]]):
    """Yield receipts as ``futures`` finish; tasks lost with a dead worker go to ``lost``."""
    remaining = set(futures)
    while remaining:
        done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
        for future in done:
            try:
                receipt = future.result()
            except BrokenProcessPool as e:
                lost.append((futures[future], e))
                continue
            except Exception as e:  # the function itself raised: a bug, or unpicklable data
                yield tasks[futures[future]].failed(f"{type(e).__name__}: {e}")
                continue
            yield receipt


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
