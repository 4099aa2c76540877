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
from typing import TYPE_CHECKING, Any

from ckptboard.core.fragment import Header
from ckptboard.core.cache import StatsCache
from ckptboard.core.discover import FileIdentity, file_identity
from ckptboard.core.errors import (
    CacheError,
    CheckpointError,
    CkptboardError,
    IncompleteCheckpointError,
    ResourceLimitError,
)
from ckptboard.core.limits import WorkerLimits, bounded_memory
from ckptboard.core.limits import installed as installed_limits
from ckptboard.core.model_spec import resolve_model
from ckptboard.core.records import StrEnum
from ckptboard.core.rows import RowSource, checkpoint_rows
from ckptboard.core.schema import TableName

if TYPE_CHECKING:
    from ckptboard.core.shards import Part

__all__ = ["ReceiptStatus", "Receipt", "CheckpointTask", "run_task", "finish_parts", "RECENT_WRITE_S"]

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
    part: int = -1  # a shard task's part index (-1: the whole checkpoint)
    record: bool = False  # a part's failure is the file's: the merge step writes the checkpoint's error fragment


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
    ino: int = 0  # with size and mtime_ns: the checkpoint's FileIdentity as listed
    ctime_ns: int = 0
    listed_at: float = 0.0  # when it was listed (epoch seconds); 0: when the task runs
    spectral: str = "off"  # ckptboard.core.spectral.SpectralMode
    part: Part | None = None  # a shard task: only this part of the checkpoint (ckptboard.core.shards)

    @property
    def listed(self) -> FileIdentity:
        """The checkpoint's identity when it was listed: the task reads it only while it still has it."""
        return FileIdentity(self.size, self.mtime_ns, self.ino, self.ctime_ns)

    def failed(self, problem: str, error: str = "WorkerLost", record: bool = False,
               limits: WorkerLimits | None = None) -> Receipt:
        """The receipt of a task the executor lost. With ``record`` (its worker died on it twice, or was killed past
        its time limit) the failure is the file's: its error row and fragment are written, so that a re-run does
        not repeat it, unless the file changed meanwhile (a worker reading a file truncated under it dies of
        SIGBUS): then it is skipped and read again next time. ``limits``: those the worker ran under, remembered
        with a ``ResourceLimitError`` so that a run under larger ones reads the file again."""
        receipt = Receipt(self.relpath, self.run, ReceiptStatus.FAILED, error=error, message=problem,
                          part=self.part.index if self.part is not None else -1)
        if not record:
            return receipt
        path = Path(self.root) / self.relpath
        try:
            changed = file_identity(path) != self.listed
        except OSError:
            changed = True
        if changed:
            receipt.status = ReceiptStatus.INCOMPLETE
            receipt.message = f"changed while it was read ({problem}); read again next time"
            return receipt
        if self.part is not None:
            receipt.record = True  # the merge step writes the checkpoint's error fragment
            return receipt
        try:
            _cache(self).write(self.relpath, _header(self, receipt, limits),
                               {TableName.ERRORS: [_error_row(self, receipt)]})
        except CkptboardError:
            pass  # the failure is reported all the same; it is just not remembered
        return receipt


def run_task(task: CheckpointTask) -> Receipt:
    """Summarise one checkpoint and write its fragment; every failure becomes a receipt, never an exception."""
    start = time.perf_counter()
    path = Path(task.root) / task.relpath
    receipt = Receipt(task.relpath, task.run, ReceiptStatus.OK, part=task.part.index if task.part else -1)
    try:
        listed = task.listed
        if file_identity(path) != listed:
            raise IncompleteCheckpointError(path, "changed since it was listed; still being written?")
        with bounded_memory(path, _files_bytes(task), task.device):
            rows, partials, receipt.tensors = _summarise(task, path)
        if file_identity(path) != listed:
            raise IncompleteCheckpointError(path, "changed while it was read; still being written?")
        if task.part is None:
            _cache(task).write(task.relpath, _header(task, receipt), rows)
        else:
            _write_part(task, rows, partials)
        receipt.bytes = task.size if task.part is None else 0
    except IncompleteCheckpointError as e:
        _set_error(receipt, ReceiptStatus.INCOMPLETE, e)
    except CheckpointError as e:
        _record_failure(task, receipt, path, e)
    except FileNotFoundError as e:
        _set_error(receipt, ReceiptStatus.INCOMPLETE, e)  # deleted (or renamed into place) since listing
    except CkptboardError as e:  # model spec, cache folder: not the file's fault, so nothing is cached
        _set_error(receipt, ReceiptStatus.FAILED, e)
    except Exception as e:  # an exception type the reader did not anticipate: the file's, recorded like the others
        _record_failure(task, receipt, path, e)
    receipt.seconds = time.perf_counter() - start
    return receipt


def finish_parts(task: CheckpointTask, receipts: list[Receipt]) -> Receipt:
    """The checkpoint's receipt once every part of ``task`` (the whole checkpoint's task) has one: its parts merged
    and its fragment written (commit record last), or the first part's failure as the checkpoint's, its error
    fragment written when the failure is the file's. The parts' folder is removed either way."""
    from ckptboard.core.merge import merge_parts, parts_dir, remove_parts

    receipts = sorted(receipts, key=lambda r: r.part)
    folder = parts_dir(task.cache_dir, StatsCache.stem(task.relpath))
    receipt = Receipt(task.relpath, task.run, ReceiptStatus.OK, seconds=max(r.seconds for r in receipts))
    try:
        bad = [r for r in receipts if r.status == ReceiptStatus.INCOMPLETE] or \
              [r for r in receipts if r.status == ReceiptStatus.FAILED]
        if bad:
            receipt.status, receipt.error, receipt.message = bad[0].status, bad[0].error, bad[0].message
            if bad[0].record:
                try:
                    rows = {TableName.ERRORS: [_error_row(task, receipt)]}
                    _cache(task).write(task.relpath, _header(task, receipt), rows)
                except CacheError:
                    pass  # the failure is reported all the same; it is just not remembered
            return receipt
        try:
            rows = merge_parts(folder, len(receipts))
            receipt.tensors = receipts[0].tensors
            _cache(task).write(task.relpath, _header(task, receipt), rows)
            receipt.bytes = task.size
        except CkptboardError as e:
            _set_error(receipt, ReceiptStatus.FAILED, e)
        except (OSError, ValueError, KeyError) as e:  # a part's files damaged meanwhile: not the checkpoint's fault
            receipt.status, receipt.error = ReceiptStatus.FAILED, type(e).__name__
            receipt.message = f"its shard tasks' results could not be merged ({e}); run summarize again"
        return receipt
    finally:
        remove_parts(folder)


def _record_failure(task: CheckpointTask, receipt: Receipt, path: Path, error: BaseException) -> None:
    """A file that fails to read: skipped if a writer may still be at it, else its error row and failure fragment,
    so that the dashboard shows its error card and a re-run does not read it again until it changes."""
    if _recently_modified(path, task.listed_at):
        _set_error(receipt, ReceiptStatus.INCOMPLETE, error)
        return
    _set_error(receipt, ReceiptStatus.FAILED, error)
    if task.part is not None:
        receipt.record = True  # the merge step writes the checkpoint's error fragment
        return
    try:
        rows = {TableName.ERRORS: [_error_row(task, receipt)]}
        _cache(task).write(task.relpath, _header(task, receipt), rows)
    except CacheError:
        pass  # the failure is reported all the same; it is just not remembered


def _set_error(receipt: Receipt, status: ReceiptStatus, error: BaseException) -> None:
    # A CheckpointError's message starts with the absolute path; the receipt names the file by relpath already.
    receipt.status, receipt.error = status, type(error).__name__
    receipt.message = getattr(error, "problem", str(error))


_WORKER_PREPARED = False


def _prepare_worker() -> None:
    """Load the readers' native libraries and the statistics' compiled kernels (numba, LLVM: ~100 MB of address
    space) in a worker before its first task (``run_task.prepare_worker``: outside its limits), so that the limits
    measure what a file costs, not what this process loads once."""
    global _WORKER_PREPARED
    if _WORKER_PREPARED:
        return
    import safetensors.torch  # noqa: F401  # its Rust library is mapped on first import
    import torch

    import ckptboard.core.classify  # noqa: F401
    import ckptboard.core.reader  # noqa: F401
    from ckptboard.core.stats import EXACT_PERCENTILE_NUMEL, tensor_stats
    from ckptboard.core.updates import update_stats

    for dtype in (torch.float32, torch.bfloat16):  # the numba kernels are used past the exact-percentile size
        tensor_stats(torch.ones(EXACT_PERCENTILE_NUMEL + 1, dtype=dtype))
    update_stats(torch.zeros(2), torch.ones(2), torch.ones(2))
    _WORKER_PREPARED = True


run_task.prepare_worker = _prepare_worker  # type: ignore[attr-defined]  # see core.worker_pool


def _files_bytes(task: CheckpointTask) -> int:
    """Bytes of the files the task opens (the checkpoint, its previous and first): what may be mapped or read."""
    total = task.size
    for relpath in {task.prev, task.first} - {None}:
        total += file_identity(Path(task.root) / relpath, missing_ok=True).size
    return total


def _recently_modified(path: Path, listed_at: float = 0.0) -> bool:
    """Modified within ``RECENT_WRITE_S`` before it was listed (a worker may start reading it seconds later)."""
    try:
        return min(time.time(), listed_at or time.time()) - path.stat().st_mtime < RECENT_WRITE_S
    except OSError:
        return True  # vanished meanwhile: a writer replaced it


def _cache(task: CheckpointTask) -> StatsCache:
    return StatsCache(task.root, task.cache_dir)


def _header(task: CheckpointTask, receipt: Receipt, limits: WorkerLimits | None = None) -> Header:
    info = {"status": str(receipt.status), "error": receipt.error, "message": receipt.message,
            "tensors": receipt.tensors, "run": task.run, "trust": task.trust}
    limits = limits or installed_limits()
    if receipt.error == ResourceLimitError.__name__ and limits is not None:
        info["limits"] = limits.record()  # a run under larger limits reads the file again (summarize.plan)
    return Header(task.key, info)


def _error_row(task: CheckpointTask, receipt: Receipt) -> dict[str, Any]:
    return {"run": task.run, "checkpoint": task.relpath, "error": receipt.error,
            "message": f"{task.relpath}: {receipt.message}"}


# --- opening the checkpoint and its neighbours ---------------------------------------------------------------------


def _write_part(task: CheckpointTask, rows, partials) -> None:
    from ckptboard.core.merge import parts_dir, write_part

    try:
        write_part(parts_dir(task.cache_dir, StatsCache.stem(task.relpath)), task.part.index, rows, partials)
    except OSError as e:
        raise CacheError(f"{task.cache_dir}: cannot write part {task.part.index} of {task.relpath} ({e})") from e


def _summarise(task: CheckpointTask, path: Path) -> tuple[dict[str, list[dict[str, Any]]], list, int]:
    """The checkpoint's rows (of a part: its rows and its split tensors' chunk sums) and its tensor count."""
    from ckptboard.core.classify import classify
    from ckptboard.core.reader import open_checkpoint
    from ckptboard.core.rows import part_rows

    model = resolve_model(task.model)
    with ExitStack() as stack:
        ckpt = stack.enter_context(open_checkpoint(path, trust=task.trust))
        classify(ckpt, model=model, trust=task.trust)
        prev = _open_neighbour(stack, task, task.prev, model)
        first = _open_neighbour(stack, task, task.first, model) if task.first != task.prev else prev
        source = RowSource(task.run, task.relpath, task.prev, task.size, task.mtime_ns)
        if task.part is None:
            rows = checkpoint_rows(source, ckpt, prev, first, device=task.device, spectral=task.spectral)
            partials: list = []
        else:
            rows, partials = part_rows(source, ckpt, prev, first, task.part, device=task.device,
                                       spectral=task.spectral)
        if task.part is None or task.part.lead:
            prev_step = None if prev is None else prev.step
            rows[TableName.TRAINING_SCALARS] = _training_rows(task, path, ckpt.step, prev_step)
        return rows, partials, len(ckpt.tensors)


def _training_rows(task: CheckpointTask, path: Path, step: int | None, prev_step: int | None) -> list[dict[str, Any]]:
    """The training scalars logged since the previous checkpoint (:mod:`ckptboard.core.layouts.logs`)."""
    from ckptboard.core.layouts.logs import log_scalars

    return [{"run": task.run, "checkpoint": task.relpath, "step": r.step, "source": r.source, "name": r.name,
             "value": r.value} for r in log_scalars(path, step, prev_step)]


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
