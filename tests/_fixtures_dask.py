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

__all__ = ["SquareTask", "square", "die_on", "raise_on", "attempts"]


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
    return _DieOn(victim)


def raise_on(victim: int):
    """A task function that raises (a bug in the function, not a file problem) on ``victim``."""
    return _RaiseOn(victim)


@dataclass(frozen=True)
class _DieOn:
    victim: int

    def __call__(self, task: SquareTask):
        _record_attempt(task)
        if task.n == self.victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return ("ok", task.n * task.n)


@dataclass(frozen=True)
class _RaiseOn:
    victim: int

    def __call__(self, task: SquareTask):
        _record_attempt(task)
        if task.n == self.victim:
            raise RuntimeError(f"boom on {task.n}")
        return ("ok", task.n * task.n)
