"""Worker processes that run one task at a time each, under :class:`~ckptboard.core.limits.WorkerLimits`.

The parent hands each worker one task over a pipe and waits for the receipt, the worker's death, or the task's
deadline, whichever comes first. A worker past its deadline is killed and its task is a recorded
``ResourceLimitError``; a worker that dies (a signal, an abort, the OOM killer) is replaced and its task retried once
in a fresh worker, then recorded as ``WorkerLost``. Only the task a worker was running is affected: the others go on.

A task function may carry ``fn.prepare_worker``, called once in each worker before its first task, outside the
limits and deadlines (``run_task`` loads the statistics' compiled kernels there).
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any

from ckptboard.core import limits as _limits
from ckptboard.core.errors import ResourceLimitError
from ckptboard.core.limits import WorkerLimits

__all__ = ["run_supervised", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 2  # a task whose worker dies is tried once more in a fresh worker before it is recorded
# A new worker starts and prepares (imports, compiled kernels) before its first task's clock starts; this bounds that.
START_S = 120.0


def run_supervised(fn: Callable[[Any], Any], tasks: list, workers: int, limits: WorkerLimits,
                   context: multiprocessing.context.BaseContext,
                   initializer: Callable[[], None] | None = None) -> Iterator[Any]:
    """Yield ``fn(task)`` for every task, in completion order, from at most ``workers`` processes."""
    queue = deque(range(len(tasks)))
    attempts = [0] * len(tasks)
    idle: list[_Worker] = []
    busy: list[_Worker] = []
    try:
        while queue or busy:
            while queue and len(busy) < workers:
                i = queue.popleft()
                attempts[i] += 1
                worker = idle.pop() if idle else _Worker(context, fn, limits, initializer)
                worker.start(i, tasks[i], limits.seconds_for(getattr(tasks[i], "size", 0)))
                busy.append(worker)
            _wait_for_any(busy)
            for worker in list(busy):
                outcome = worker.outcome()
                if outcome is None:
                    continue
                busy.remove(worker)
                i, task = worker.index, tasks[worker.index]
                kind, value = outcome
                if kind == "done":
                    idle.append(worker)
                    yield value
                elif kind == "raised":  # fn itself raised: a bug, or unpicklable data; the worker lives on
                    idle.append(worker)
                    yield task.failed(value)
                elif kind == "timeout":
                    yield task.failed(value, error=ResourceLimitError.__name__, record=True, limits=limits)
                elif attempts[i] < MAX_ATTEMPTS:  # died: retry in a fresh worker
                    queue.append(i)
                else:
                    yield task.failed(f"worker process died twice ({value})", record=True)
    finally:
        for worker in idle + busy:
            worker.stop()


def _wait_for_any(busy: list[_Worker]) -> None:
    deadlines = [w.deadline for w in busy if w.deadline is not None]
    timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
    wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)


class _Worker:
    """One worker process and the task it runs."""

    def __init__(self, context, fn, limits: WorkerLimits, initializer):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, fn, limits, initializer), daemon=True)
        with _without_main_script():
            self.process.start()
        child.close()
        self.index = -1
        self.deadline: float | None = None
        self.seconds: float | None = None

    def start(self, index: int, task: Any, seconds: float | None) -> None:
        self.index, self.seconds = index, seconds
        self.deadline = time.monotonic() + seconds + START_S if seconds else None  # until the worker says "started"
        self.conn.send(task)

    def outcome(self) -> tuple[str, Any] | None:
        """``("done", receipt)``, ``("raised", problem)``, ``("died", how)``, ``("timeout", problem)`` or None."""
        try:
            while self.conn.poll():
                reply = self.conn.recv()
                if reply[0] != "started":
                    return reply
                if self.seconds:
                    self.deadline = time.monotonic() + self.seconds
        except (EOFError, OSError):
            pass  # the pipe closed under a reply: the worker died
        if not self.process.is_alive():
            self.stop()
            return "died", _how(self.process.exitcode)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop()
            return "timeout", (f"took longer than {self.seconds:.3g} s, the worker's time limit; a run with a larger "
                               f"--timeout reads it again")
        return None

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


@contextmanager
def _without_main_script() -> Iterator[None]:
    """A spawned or fork-server worker re-runs the parent's ``__main__`` script (unless it was run with ``-m``); in the
    dashboard that is the app itself (Streamlit runs it as ``__main__``). Start workers with a blank one instead."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _serve(conn, fn, limits: WorkerLimits, initializer) -> None:
    """The worker's loop: a task in, ``("done", receipt)`` or ``("raised", problem)`` out, until the pipe closes."""
    if initializer is not None:
        initializer()
    prepare = getattr(fn, "prepare_worker", None)
    if prepare is not None:
        prepare()
    _limits.install(limits)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(("started", None))
        try:
            reply = ("done", fn(task))
        except Exception as e:
            reply = ("raised", f"{type(e).__name__}: {e}")
        conn.send(reply)
