"""One checkpoint's work, runnable in any process: open it (and its run's previous and first checkpoints), have
:mod:`ckptboard.core.rows` compute its rows, write its cache fragment, and return a small :class:`Receipt`.

This module owns the task's lifecycle and its failure policy: which failures are cached (a broken file), which are
retried next time (a file still being written, a worker's surprise) and which are not the file's fault.

Everything here is picklable and self-contained so that an executor can ship a :class:`CheckpointTask` to another
process or machine that shares the file system; the tensors never leave the worker.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptboard.core.fragment import Header
from ckptboard.core.cache import StatsCache
from ckptboard.core.discover import FileIdentity, file_identity
from ckptboard.core.errors import CacheError, CheckpointError, CkptboardError, IncompleteCheckpointError
from ckptboard.core.model_spec import resolve_model
from ckptboard.core.records import StrEnum
from ckptboard.core.rows import RowSource, checkpoint_rows
from ckptboard.core.schema import TableName

__all__ = ["ReceiptStatus", "Receipt", "CheckpointTask", "run_task", "RECENT_WRITE_S"]

# A file modified this recently that fails to read is taken to be still being written, not corrupt.
RECENT_WRITE_S = 5.0


class ReceiptStatus(StrEnum):
    OK = "ok"  # summarised now, fragment written
    CACHED = "cached"  # the cache already held a current fragment (ok or failed)
    FAILED = "failed"  # the file cannot be summarised; ``error``/``message`` say why
    INCOMPLETE = "incomplete"  # still being written: skipped this time, no fragment


@dataclass
class Receipt:
    """What a task sends back: never tensors, only what the report needs."""

    relpath: str
    run: str
    status: ReceiptStatus
    error: str = ""  # exception type name when failed/incomplete
    message: str = ""
    tensors: int = 0
    bytes: int = 0  # bytes of the checkpoint read (0 when cached)
    seconds: float = 0.0


@dataclass
class CheckpointTask:
    """Summarise ``root/relpath`` (a checkpoint of ``run``) into the fragment of ``cache_dir``."""

    root: str
    relpath: str
    run: str
    size: int
    mtime_ns: int
    prev: str | None  # relative path of the previous checkpoint of the run (None for the first)
    first: str | None  # relative path of the run's first checkpoint (None for the first itself)
    cache_dir: str
    key: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    trust: bool = False
    model: Any = None  # a --model SPEC string, an nn.Module, or None

    def failed(self, problem: str) -> Receipt:
        """The receipt of a task the executor lost (its worker died)."""
        return Receipt(self.relpath, self.run, ReceiptStatus.FAILED, error="WorkerLost", message=problem)


def run_task(task: CheckpointTask) -> Receipt:
    """Summarise one checkpoint and write its fragment; every failure becomes a receipt, never an exception."""
    start = time.perf_counter()
    path = Path(task.root) / task.relpath
    receipt = Receipt(task.relpath, task.run, ReceiptStatus.OK)
    try:
        listed = FileIdentity(task.size, task.mtime_ns)
        if file_identity(path) != listed:
            raise IncompleteCheckpointError(path, "changed since it was listed; still being written?")
        rows, receipt.tensors = _summarise(task, path)
        if file_identity(path) != listed:
            raise IncompleteCheckpointError(path, "changed while it was read; still being written?")
        _cache(task).write(task.relpath, _header(task, receipt), rows)
        receipt.bytes = task.size
    except IncompleteCheckpointError as e:
        _set_error(receipt, ReceiptStatus.INCOMPLETE, e)
    except CheckpointError as e:
        if _recently_modified(path):
            _set_error(receipt, ReceiptStatus.INCOMPLETE, e)
        else:
            # A broken file stays broken until it changes: cache the failure so the dashboard shows its error
            # card without re-reading it.
            _set_error(receipt, ReceiptStatus.FAILED, e)
            try:
                rows = {TableName.ERRORS: [_error_row(task, receipt)]}
                _cache(task).write(task.relpath, _header(task, receipt), rows)
            except CacheError:
                pass  # the failure is reported all the same; it is just not remembered
    except FileNotFoundError as e:
        _set_error(receipt, ReceiptStatus.INCOMPLETE, e)  # deleted (or renamed into place) since listing
    except CkptboardError as e:  # model spec, cache folder: not the file's fault, so nothing is cached
        _set_error(receipt, ReceiptStatus.FAILED, e)
    except Exception as e:  # torch internals on a file we did not anticipate: reported, retried next run
        _set_error(receipt, ReceiptStatus.FAILED, e)
        receipt.message = f"unexpected {type(e).__name__}: {e}"
    receipt.seconds = time.perf_counter() - start
    return receipt


def _set_error(receipt: Receipt, status: ReceiptStatus, error: BaseException) -> None:
    # A CheckpointError's message starts with the absolute path; the receipt names the file by relpath already.
    receipt.status, receipt.error = status, type(error).__name__
    receipt.message = getattr(error, "problem", str(error))


def _recently_modified(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < RECENT_WRITE_S
    except OSError:
        return True  # vanished meanwhile: a writer replaced it


def _cache(task: CheckpointTask) -> StatsCache:
    return StatsCache(task.root, task.cache_dir)


def _header(task: CheckpointTask, receipt: Receipt) -> Header:
    info = {"status": str(receipt.status), "error": receipt.error, "message": receipt.message,
            "tensors": receipt.tensors, "run": task.run, "trust": task.trust}
    return Header(task.key, info)


def _error_row(task: CheckpointTask, receipt: Receipt) -> dict[str, Any]:
    return {"run": task.run, "checkpoint": task.relpath, "error": receipt.error,
            "message": f"{task.relpath}: {receipt.message}"}


# --- opening the checkpoint and its neighbours ---------------------------------------------------------------------


def _summarise(task: CheckpointTask, path: Path) -> tuple[dict[str, list[dict[str, Any]]], int]:
    from ckptboard.core.classify import classify
    from ckptboard.core.reader import open_checkpoint

    model = resolve_model(task.model)
    with ExitStack() as stack:
        ckpt = stack.enter_context(open_checkpoint(path, trust=task.trust))
        classify(ckpt, model=model, trust=task.trust)
        prev = _open_neighbour(stack, task, task.prev, model)
        first = _open_neighbour(stack, task, task.first, model) if task.first != task.prev else prev
        source = RowSource(task.run, task.relpath, task.prev, task.size, task.mtime_ns)
        return checkpoint_rows(source, ckpt, prev, first, device=task.device), len(ckpt.tensors)


def _open_neighbour(stack: ExitStack, task: CheckpointTask, relpath: str | None, model: Any):
    """The previous/first checkpoint of the run, or None when there is none or it cannot be read."""
    from ckptboard.core.classify import classify
    from ckptboard.core.reader import open_checkpoint

    if relpath is None:
        return None
    try:
        other = stack.enter_context(open_checkpoint(Path(task.root) / relpath, trust=task.trust))
        classify(other, model=model, trust=task.trust)
    except CheckpointError:
        return None  # its own task reports it; this checkpoint just has no update statistics against it
    return other
