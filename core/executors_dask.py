"""The ``dask`` executor: checkpoint tasks on a Dask distributed cluster, or on a ``LocalCluster`` it starts itself.

Workers open checkpoints by path on a file system they share with the client and write their cache fragments
themselves; only the task (paths, a key) goes out and only its small receipt comes back. A task lost with its
worker is resubmitted once, then reported with ``task.failed(problem)``; the others go on. Dask is an optional
extra, imported only when a :class:`DaskExecutor` is made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ckptboard.core.errors import UsageError
from ckptboard.core.executors import FailableTask, default_workers

__all__ = ["DaskExecutor", "INSTALL_HINT", "SCHEDULER_CONFIG"]

R = TypeVar("R")

INSTALL_HINT = "pip install ckptboard[dask]"

_MAX_ATTEMPTS = 2  # a lost task is resubmitted once
_CONNECT_TIMEOUT_S = 10

# The scheduler settings of the LocalCluster we start (and what we advise for a cluster of your own): a worker death
# fails its task at once (we resubmit it ourselves, so "retried once" means exactly two attempts), and each
# one-thread worker holds one task at a time, so a dying worker takes no queued bystander down with it and a long
# checkpoint never waits behind another on a busy worker.
SCHEDULER_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.scheduler.worker-saturation": 1.0,
}


class DaskExecutor:
    """Runs tasks on the Dask scheduler at ``scheduler``, or on a LocalCluster of ``n_workers`` processes."""

    def __init__(self, scheduler: str | None = None, n_workers: int | None = None, *,
                 dashboard_address: str | None = ":8787",
                 on_start: Callable[[DaskExecutor], None] | None = None):
        _distributed()  # fail here, at the boundary, when Dask is not installed
        if scheduler is not None and not str(scheduler).strip():
            raise UsageError("--scheduler: empty address; pass e.g. tcp://host:8786, or leave it out")
        if scheduler is not None and n_workers is not None:
            raise UsageError("--workers applies to the LocalCluster ckptboard starts; with --scheduler the cluster "
                             "has the workers it was started with")
        if n_workers is not None and int(n_workers) < 1:
            raise UsageError(f"--workers must be at least 1, got {n_workers}")
        self.scheduler = scheduler
        self.n_workers = int(n_workers) if n_workers is not None else None
        self.dashboard_address = dashboard_address
        self.on_start = on_start  # called once connected, e.g. to print the dashboard link
        self._client = None
        self._cluster = None

    def __repr__(self) -> str:
        where = self.scheduler or f"LocalCluster(n_workers={self.n_workers or 'auto'})"
        return f"DaskExecutor({where})"

    def __enter__(self) -> DaskExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def parallelism(self) -> int:
        """How many tasks run at once: the LocalCluster's workers, the connected cluster's, else 2 (a cluster of
        one's own is taken to be parallel: ``summarize`` then splits a large checkpoint into shard tasks)."""
        if self._client is not None:
            try:
                return max(1, len(self._client.scheduler_info().get("workers", {})))
            except Exception:  # a lost scheduler: its tasks will report it
                pass
        if self.scheduler is None:
            return self.n_workers or default_workers()
        return 2

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's URL once started, or None when there is none."""
        return (self._client.dashboard_link or None) if self._client is not None else None

    def start(self) -> DaskExecutor:
        """Connect to the scheduler, or start the LocalCluster; a no-op when already started."""
        if self._client is not None:
            return self
        distributed = _distributed()
        if self.scheduler is None:
            import dask

            n_workers = self.n_workers or default_workers()
            try:
                with dask.config.set(SCHEDULER_CONFIG):
                    self._cluster = distributed.LocalCluster(
                        n_workers=n_workers, threads_per_worker=1, processes=True,
                        dashboard_address=self.dashboard_address,
                        # Lost tasks are reported per file by us; Dask's own warnings (a slow worker shutdown on a
                        # busy machine, a nanny restarting a worker) would only interleave with the progress bar.
                        silence_logs=logging.ERROR,
                    )
            except (RuntimeError, OSError) as e:  # "Nanny failed to start": a worker process could not start
                raise UsageError(
                    f"--executor dask: cannot start a Dask LocalCluster of {n_workers} worker processes here "
                    f"({type(e).__name__}: {e}); try fewer --workers, --executor local, or --scheduler ADDR"
                ) from e
            self._client = distributed.Client(self._cluster)
        else:
            try:
                self._client = distributed.Client(self.scheduler, timeout=_CONNECT_TIMEOUT_S)
            except (OSError, ValueError) as e:  # TimeoutError is an OSError; a malformed address a ValueError
                raise UsageError(
                    f"--scheduler {self.scheduler}: cannot reach a Dask scheduler there ({type(e).__name__}: "
                    f"{e}); start one with `dask scheduler` and workers with `dask worker ADDRESS`, "
                    "or leave --scheduler out to start a LocalCluster"
                ) from e
        if self.on_start is not None:
            self.on_start(self)
        return self

    def close(self) -> None:
        """Disconnect, and shut down the LocalCluster if this executor started it."""
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def map_unordered(self, fn: Callable[[Any], R], tasks: Iterable[FailableTask]) -> Iterator[R]:
        """Submit every task; yield receipts as they finish. Starts (and then closes) the cluster if not started."""
        tasks = list(tasks)
        if not tasks:
            return
        owned = self._client is None
        self.start()
        try:
            yield from self._run(fn, tasks)
        finally:
            if owned:
                self.close()

    def _run(self, fn: Callable[[Any], R], tasks: list[FailableTask]) -> Iterator[R]:
        distributed = _distributed()
        client = self._client
        attempts: dict[Any, tuple[int, int]] = {}  # future -> (task index, attempt number)

        def submit(i: int, attempt: int):
            future = client.submit(fn, tasks[i], pure=False)
            attempts[future] = (i, attempt)
            return future

        pending = distributed.as_completed([submit(i, 1) for i in range(len(tasks))])
        try:
            for future in pending:
                i, attempt = attempts.pop(future)
                try:
                    receipt = future.result()
                except (Exception, asyncio.CancelledError) as e:  # KilledWorker, a raising fn, a lost scheduler
                    problem = _problem(e, attempt)
                    if attempt < _MAX_ATTEMPTS:
                        try:
                            pending.add(submit(i, attempt + 1))
                            continue
                        except Exception as resubmit_error:  # the client itself is gone
                            problem += f"; could not resubmit ({type(resubmit_error).__name__}: {resubmit_error})"
                    yield tasks[i].failed(problem)
                    continue
                finally:
                    future.release()
                yield receipt
        finally:
            for future in list(attempts):  # the caller stopped early: stop the rest
                future.cancel()


def _problem(error: BaseException, attempt: int) -> str:
    tried = f"attempt {attempt} of {_MAX_ATTEMPTS}"
    if type(error).__name__ == "KilledWorker":
        worker = getattr(getattr(error, "last_worker", None), "address", "?")
        return f"the Dask worker running it died ({tried}; last on {worker}: see that worker's log)"
    return f"failed on the Dask cluster ({tried}): {type(error).__name__}: {error}"


def _distributed():
    """``dask.distributed``, or one :class:`UsageError` saying how to install it."""
    try:
        import distributed
    except ImportError as e:
        raise UsageError(f"--executor dask needs Dask's distributed scheduler, which is not installed: "
                         f"{INSTALL_HINT}") from e
    return distributed
