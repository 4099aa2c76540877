"""Dask test helpers: tiny picklable tasks and task functions that run on real LocalCluster workers.

The workers of a LocalCluster started inside pytest are spawned with pytest's ``sys.path``, so they import this
module by name, as they import ``ckptboard``.
"""

from __future__ import annotations

import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["SquareTask", "square", "die_on", "raise_on", "attempts", "KillMidWriteExecutor"]


@dataclass
class SquareTask:
    """A task whose receipt is ``("ok", n * n)``; ``marker_dir`` records each attempt as a file."""

    n: int
    marker_dir: str = ""

    def failed(self, problem: str) -> tuple[str, int, str]:
        return ("failed", self.n, problem)


def _record_attempt(task: SquareTask) -> None:
    if task.marker_dir:
        (Path(task.marker_dir) / f"{task.n}-{uuid.uuid4().hex}").touch()


def attempts(marker_dir: Path, n: int) -> int:
    """How many times the task ``n`` started."""
    return len(list(marker_dir.glob(f"{n}-*")))


def square(task: SquareTask) -> tuple[str, int]:
    _record_attempt(task)
    return ("ok", task.n * task.n)


def die_on(victim: int):
    """A task function whose worker process is killed (SIGKILL, as the kernel's OOM killer does) on ``victim``."""
    return _FailOn(victim, kill=True)


def raise_on(victim: int):
    """A task function that raises (a bug in the function, not a file problem) on ``victim``."""
    return _FailOn(victim, kill=False)


@dataclass(frozen=True)
class _FailOn:
    victim: int
    kill: bool

    def __call__(self, task: SquareTask):
        if task.n == self.victim:
            _record_attempt(task)
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"boom on {task.n}")
        return square(task)


class KillMidWriteExecutor:
    """Wraps an executor so that the worker writing ``victim``'s fragment is SIGKILLed after the temp file is
    complete and fsynced, before the rename into place. Each attempt on the victim leaves a file in ``marker_dir``."""

    def __init__(self, executor, victim: str, marker_dir: str):
        self.executor, self.victim, self.marker_dir = executor, victim, marker_dir

    def map_unordered(self, fn, tasks):
        return self.executor.map_unordered(_KillMidWrite(fn, self.victim, self.marker_dir), tasks)


@dataclass(frozen=True)
class _KillMidWrite:
    fn: Callable[[Any], Any]
    victim: str
    marker_dir: str

    def __call__(self, task):
        if task.relpath == self.victim:
            from ckptboard.core import atomic

            (Path(self.marker_dir) / uuid.uuid4().hex).touch()
            atomic.os = _DieOnRename()  # this worker process dies in this task, so nothing else sees it
        return self.fn(task)


class _DieOnRename:
    """``os`` for the fragment writer, except that the atomic rename kills the process first."""

    def __getattr__(self, name: str):
        return getattr(os, name)

    def replace(self, src, dst):
        os.kill(os.getpid(), signal.SIGKILL)
