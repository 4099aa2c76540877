"""One checkpoint's work, runnable in any process: open it (and its run's previous and first checkpoints), compute
its rows one tensor at a time, write its cache fragment, and return a small :class:`Receipt`.

Everything here is picklable and self-contained so that an executor can ship a :class:`CheckpointTask` to another
process or machine that shares the file system; the tensors never leave the worker.
"""

from __future__ import annotations

import functools
import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckptboard.core._fragment import Header
from ckptboard.core.cache import StatsCache
from ckptboard.core.errors import CacheError, CheckpointError, CkptboardError, IncompleteCheckpointError
from ckptboard.core.records import StrEnum, TensorInfo, TensorKind

__all__ = ["ReceiptStatus", "Receipt", "CheckpointTask", "run_task", "resolve_model", "RECENT_WRITE_S", "file_identity"]

# A file modified this recently that fails to read is taken to be still being written, not corrupt.
RECENT_WRITE_S = 5.0

_RUNNING_STATS = ("running_mean", "running_var")


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
    status: str
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


def file_identity(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) as discovery reports them: of the file; of a checkpoint folder, the files its layout names
    (size summed, latest mtime)."""
    from ckptboard.core.layouts import checkpoint_files

    stats = [f.stat() for f in checkpoint_files(path)]
    return sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


def run_task(task: CheckpointTask) -> Receipt:
    """Summarise one checkpoint and write its fragment; every failure becomes a receipt, never an exception."""
    start = time.perf_counter()
    path = Path(task.root) / task.relpath
    receipt = Receipt(task.relpath, task.run, ReceiptStatus.OK)
    try:
        if file_identity(path) != (task.size, task.mtime_ns):
            raise IncompleteCheckpointError(path, "changed since it was listed; still being written?")
        rows, receipt.tensors = _summarise(task, path)
        if file_identity(path) != (task.size, task.mtime_ns):
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
                _cache(task).write(task.relpath, _header(task, receipt), {"errors": [_error_row(task, receipt)]})
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


def _set_error(receipt: Receipt, status: str, error: BaseException) -> None:
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


# --- the statistics of one checkpoint -------------------------------------------------------------------------


def _summarise(task: CheckpointTask, path: Path) -> tuple[dict[str, list[dict[str, Any]]], int]:
    from ckptboard.core.classify import classify
    from ckptboard.core.reader import open_checkpoint

    model = resolve_model(task.model)
    with ExitStack() as stack:
        ckpt = stack.enter_context(open_checkpoint(path, trust=task.trust))
        classify(ckpt, model=model)
        prev = _open_neighbour(stack, task, task.prev, model)
        first = _open_neighbour(stack, task, task.first, model) if task.first != task.prev else prev
        rows = _Rows(task, ckpt, prev, first)
        rows.collect()
        return rows.tables, len(ckpt.tensors)


def _open_neighbour(stack: ExitStack, task: CheckpointTask, relpath: str | None, model: Any):
    """The previous/first checkpoint of the run, or None when there is none or it cannot be read."""
    from ckptboard.core.classify import classify
    from ckptboard.core.reader import open_checkpoint

    if relpath is None:
        return None
    try:
        other = stack.enter_context(open_checkpoint(Path(task.root) / relpath, trust=task.trust))
        classify(other, model=model)
    except CheckpointError:
        return None  # its own task reports it; this checkpoint just has no update statistics against it
    return other


@functools.lru_cache(maxsize=4)
def _model_from_spec(spec: str):
    from ckptboard.core.model_spec import load_model

    return load_model(spec, device="meta")  # built once per process; meta: no memory spent


def resolve_model(model: Any):
    """The ``nn.Module`` for a ``--model SPEC`` string (built once per process), or ``model`` itself."""
    return _model_from_spec(model) if isinstance(model, str) else model


class _Rows:
    """Builds the table rows of one checkpoint, loading one tensor (and its previous/first) at a time."""

    def __init__(self, task: CheckpointTask, ckpt, prev, first):
        self.task, self.ckpt, self.prev, self.first = task, ckpt, prev, first
        self.base = {"run": task.run, "checkpoint": task.relpath, "step": ckpt.step}
        self.tables: dict[str, list[dict[str, Any]]] = {
            name: [] for name in ("tensors", "histograms", "updates", "batchnorm", "events")
        }
        self._running: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def collect(self) -> None:
        from ckptboard.core.stats import tensor_stats

        device = self.task.device
        prev_index = _index(self.prev)
        first_index = _index(self.first)
        done: dict[tuple[str, str], tuple[dict, dict, dict | None]] = {}
        for info in self.ckpt.tensors:
            ident = (info.group, info.name)
            tied = (info.group, info.tied_to) if info.tied_to else None
            if tied in done:  # the same storage: the same numbers, computed once
                stats, hist, update = done[tied]
            else:
                tensor = self.ckpt.load(info)
                result = tensor_stats(tensor, device=device)
                stats = result.as_row()
                hist = _histogram_row(result.histogram)
                update = self._update(info, tensor, prev_index.get(ident), first_index.get(ident))
                self._keep_running_stat(info, tensor)
                del tensor
                done[ident] = (stats, hist, update)
            self.tables["tensors"].append({**self.base, **_identity_row(info), **stats})
            self.tables["histograms"].append({**self.base, "group": info.group, "name": info.name, **hist})
            if update is not None:
                self.tables["updates"].append({**self._update_base(), "group": info.group, "name": info.name,
                                               "module": info.module, "kind": str(info.kind), **update})
        self._batchnorm_rows()
        self._event_rows(prev_index)
        self.tables["checkpoints"] = [self._checkpoint_row()]

    def _update(self, info: TensorInfo, tensor, prev_info: TensorInfo | None, first_info: TensorInfo | None):
        from ckptboard.core.updates import update_stats

        if prev_info is None or tuple(prev_info.shape) != tuple(info.shape):
            return None
        # A neighbour that cannot be read (being rewritten, damaged) costs this checkpoint its update statistics,
        # not its other rows: its own task reports it, and this fragment's key names its identity.
        prev_tensor = _load_or_none(self.prev, prev_info)
        if prev_tensor is None:
            return None
        first_tensor = None
        if first_info is not None and tuple(first_info.shape) == tuple(info.shape):
            first_tensor = prev_tensor if self.first is self.prev else _load_or_none(self.first, first_info)
        return update_stats(prev_tensor, tensor, first_tensor, device=self.task.device).as_row()

    def _update_base(self) -> dict[str, Any]:
        return {**self.base, "prev_checkpoint": self.task.prev, "prev_step": self.prev.step}

    def _keep_running_stat(self, info: TensorInfo, tensor) -> None:
        module, _, leaf = info.name.rpartition(".")
        if leaf in _RUNNING_STATS and info.kind == TensorKind.BUFFER and tensor.dim() == 1:
            self._running.setdefault((info.group, module), {})[leaf] = tensor.detach().to("cpu", copy=True)

    def _batchnorm_rows(self) -> None:
        from ckptboard.core.updates import norm_running_stats

        for (group, module), stats in self._running.items():
            if set(stats) != set(_RUNNING_STATS) or stats["running_mean"].shape != stats["running_var"].shape:
                continue  # not a norm layer's pair of running statistics
            rows = norm_running_stats(module, stats["running_mean"], stats["running_var"])
            self.tables["batchnorm"] += [{**self.base, "group": group, **row} for row in rows]

    def _event_rows(self, prev_index: dict[tuple[str, str], TensorInfo]) -> None:
        if self.prev is None:
            return
        current = _index(self.ckpt)
        events = []
        for ident, info in current.items():
            before = prev_index.get(ident)
            if before is None:
                events.append((ident, "added", f"{_shape(info.shape)} {info.dtype}"))
            elif tuple(before.shape) != tuple(info.shape):
                events.append((ident, "reshaped", f"{_shape(before.shape)} -> {_shape(info.shape)}"))
        for ident, info in prev_index.items():
            if ident not in current:
                events.append((ident, "removed", f"{_shape(info.shape)} {info.dtype}"))
        for (group, name), event, detail in events:
            self.tables["events"].append({**self.base, "group": group, "name": name, "event": event,
                                          "detail": detail})

    def _checkpoint_row(self) -> dict[str, Any]:
        ckpt, task = self.ckpt, self.task
        counted = [t for t in ckpt.tensors if not t.tied_to]  # tied tensors share storage: counted once
        params = [t for t in counted if t.kind == TensorKind.PARAMETER]
        buffers = [t for t in counted if t.kind == TensorKind.BUFFER]
        return {
            **self.base,
            "step_source": str(ckpt.step_source),
            "format": str(ckpt.format),
            "size_bytes": task.size,
            "mtime": task.mtime_ns / 1e9,
            "n_tensors": len(ckpt.tensors),
            "n_parameters": len(params),
            "n_trainable": sum(1 for t in params if t.trainable == "true"),
            "n_frozen": sum(1 for t in params if t.trainable == "false"),
            "n_buffers": len(buffers),
            "parameter_bytes": sum(t.nbytes for t in params),
            "buffer_bytes": sum(t.nbytes for t in buffers),
            "optimizer": _optimizer_text(ckpt.optimizers),
            "metadata_json": json.dumps(ckpt.metadata, sort_keys=True, default=str),
            "skipped_globals": "; ".join(ckpt.skipped_globals),
        }


def _load_or_none(ckpt, info: TensorInfo):
    try:
        return ckpt.load(info)
    except CheckpointError:
        return None


def _index(ckpt) -> dict[tuple[str, str], TensorInfo]:
    return {} if ckpt is None else {(t.group, t.name): t for t in ckpt.tensors}


def _identity_row(info: TensorInfo) -> dict[str, Any]:
    return {
        "group": info.group, "name": info.name, "raw_name": info.raw_name, "module": info.module,
        "kind": str(info.kind), "trainable": str(info.trainable), "source": info.source, "dtype": info.dtype,
        "shape": _shape(info.shape), "numel": info.numel, "nbytes": info.nbytes, "tied_to": info.tied_to,
    }


def _shape(shape) -> str:
    return json.dumps([int(s) for s in shape])


def _histogram_row(histogram) -> dict[str, list]:
    if histogram is None:
        return {"lo": [], "hi": [], "counts": []}
    return {"lo": _floats(histogram.lo), "hi": _floats(histogram.hi), "counts": [int(c) for c in histogram.counts]}


def _floats(values) -> list[float]:
    return [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def _optimizer_text(optimizers) -> str:
    """``key_path: N params, state a,b`` per optimizer found, ``; ``-joined (empty when none)."""
    parts = []
    for opt in optimizers:
        names = ",".join(opt.state_names)
        parts.append(f"{opt.key_path}: {len(opt.params)} params" + (f", state {names}" if names else ""))
    return "; ".join(parts)
