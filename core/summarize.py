"""Summarise every checkpoint under a folder into the stats cache, once: plan, hand tasks to an executor, report.

``plan`` discovers the runs, keys each checkpoint (:func:`ckptboard.core.cache.cache_key`) and keeps as work only those
without a current fragment; ``execute`` runs that work on an :class:`~ckptboard.core.executors.Executor` and
prunes fragments of deleted checkpoints; ``summarize`` does both. An unchanged folder costs one ``stat`` and one
fragment footer per checkpoint and opens no checkpoint.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ckptboard.core.cache import LookupStatus, StatsCache, cache_key, warn_invalid
from ckptboard.core.devices import resolve_device
from ckptboard.core.discover import discover
from ckptboard.core.errors import ResourceLimitError, UnsafeCheckpointError, UsageError
from ckptboard.core.compact import compact_if_due
from ckptboard.core.executors import Executor, LocalExecutor
from ckptboard.core.limits import WorkerLimits
from ckptboard.core.model_spec import resolve_model
from ckptboard.core.task import CheckpointTask, Receipt, ReceiptStatus, finish_parts, run_task

__all__ = [
    "Failure",
    "Plan",
    "SummaryReport",
    "plan",
    "execute",
    "summarize",
    "refresh",
    "shard_tasks",
    "SPLIT_MIN_BYTES",
]

# A checkpoint smaller than this is never split into shard tasks: its parts' extra listings would cost more.
SPLIT_MIN_BYTES = 256 << 20


@dataclass(frozen=True)
class Failure:
    """A checkpoint that could not be summarised: its path relative to ROOT, the error type and message."""

    relpath: str
    error: str
    message: str


@dataclass
class Plan:
    """What ``summarize`` will do: ``tasks`` to run, checkpoints already ``cached`` (as receipts)."""

    root: Path
    cache: StatsCache
    tasks: list[CheckpointTask] = field(default_factory=list)
    cached: list[Receipt] = field(default_factory=list)
    relpaths: list[str] = field(default_factory=list)  # every checkpoint discovered
    aliases: dict[str, str] = field(default_factory=dict)  # a copy not summarised (last.ckpt) -> the one it copies

    @property
    def todo_bytes(self) -> int:
        return sum(t.size for t in self.tasks)


@dataclass
class SummaryReport:
    """The outcome of one ``summarize``: counts over every checkpoint found, bytes read and time taken now."""

    root: Path
    cache_dir: Path
    checkpoints: int = 0  # summarised (now or earlier) without error
    tensors: int = 0  # model tensors in those checkpoints
    bytes: int = 0  # bytes of checkpoints read by this call
    seconds: float = 0.0
    cached: int = 0  # checkpoints whose current fragment was already in the cache (failed ones included)
    computed: int = 0  # checkpoints read by this call
    failures: list[Failure] = field(default_factory=list)
    skipped_incomplete: list[str] = field(default_factory=list)  # still being written: picked up next time
    aliases: dict[str, str] = field(default_factory=dict)  # copies shown once (Plan.aliases)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def gb_per_s(self) -> float:
        return self.bytes / 1e9 / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        text = (f"{self.checkpoints} checkpoints ({self.cached} from cache), {self.tensors} tensors, "
                f"{self.bytes / 1e9:.3g} GB read in {self.seconds:.1f} s ({self.gb_per_s:.3g} GB/s), "
                f"{len(self.failures)} failed")
        if self.skipped_incomplete:
            text += f", {len(self.skipped_incomplete)} skipped (still being written)"
        if self.aliases:
            text += f", {len(self.aliases)} alias(es) shown once ({_alias_text(self.aliases)})"
        return text

    def add(self, receipt: Receipt) -> None:
        """Count one finished (or cached) checkpoint."""
        if receipt.status == ReceiptStatus.INCOMPLETE:
            self.skipped_incomplete.append(receipt.relpath)
            return
        if receipt.status == ReceiptStatus.CACHED:
            self.cached += 1
        else:
            self.computed += 1
            self.bytes += receipt.bytes
        if receipt.error:
            self.failures.append(Failure(receipt.relpath, receipt.error, receipt.message))
        else:
            self.checkpoints += 1
            self.tensors += receipt.tensors


def plan(root: str | Path, *, cache_dir: str | Path | None = None, device: str = "cpu", model: Any = None,
         trust: bool = False, spectral: str = "off", limits: WorkerLimits | None = None) -> Plan:
    """Discover ROOT's checkpoints and decide which need summarising; reads fragment footers, no checkpoint.

    ``spectral``: ``off``, ``default`` or ``full`` (:class:`ckptboard.core.spectral.SpectralMode`). ``limits``: those
    the tasks will run under; a checkpoint recorded past smaller ones (a ``ResourceLimitError``) is read again."""
    spectral = _spectral_mode(spectral)
    root = Path(root).absolute()  # tasks may run in other processes, with another working directory
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; pass the folder that holds the training run's checkpoints")
    fingerprint = _model_fingerprint(model)
    cache = StatsCache(root, Path(cache_dir).absolute() if cache_dir is not None else None)
    cache.ensure()
    result = Plan(root=root, cache=cache)
    invalid: list[str] = []
    listed_at = time.time()
    for run in discover(root):
        result.aliases.update((a.relpath, a.alias_of) for a in run.aliases)
        files = list(run.checkpoints)
        for i, cf in enumerate(files):
            result.relpaths.append(cf.relpath)
            prev = files[i - 1] if i else None
            first = files[0] if i else None
            key = cache_key(cf, prev, first, fingerprint or _config_fingerprint(root / cf.relpath), spectral)
            lookup = cache.lookup(cf.relpath, key)
            if lookup.status == LookupStatus.INVALID:
                invalid.append(lookup.problem)
            if lookup.hit and not _retry(lookup.header.info, trust, limits, cf.size):
                result.cached.append(_cached_receipt(cf.relpath, run.name, lookup.header.info))
                continue
            result.tasks.append(CheckpointTask(
                root=str(root), relpath=cf.relpath, run=run.name, size=cf.size, mtime_ns=cf.mtime_ns,
                prev=prev.relpath if prev else None, first=first.relpath if first else None, cache_dir=str(cache.dir),
                key=key, device=device, trust=trust, model=model, ino=cf.ino, ctime_ns=cf.ctime_ns,
                listed_at=listed_at, spectral=spectral,
            ))
    warn_invalid(invalid, "were unreadable or of another format version and are recomputed")
    return result


def execute(work: Plan, executor: Executor | None = None,
            progress: Callable[[Receipt], None] | None = None, *, split: bool | None = None,
            on_compact: Callable[[str, int], None] | None = None) -> SummaryReport:
    """Run ``work``'s tasks on ``executor`` (in this process by default); ``progress(receipt)`` as each checkpoint
    finishes; ``on_compact(run, fragments)`` before a run's tables are compacted (:mod:`ckptboard.core.compact`).
    ``split``: shard tasks for every checkpoint of several data files (True), for none (False), or for those worth
    it (None, see :func:`shard_tasks`)."""
    start = time.perf_counter()
    report = SummaryReport(root=work.root, cache_dir=work.cache.dir, aliases=dict(work.aliases))
    for receipt in work.cached:
        report.add(receipt)
    executor = executor if executor is not None else LocalExecutor(1)
    tasks = shard_tasks(work.tasks, getattr(executor, "parallelism", 1), split)
    wholes = {t.relpath: t for t in work.tasks}
    parts: dict[str, list[Receipt]] = {}
    counts = {t.relpath: t.part.count for t in tasks if t.part is not None}
    for receipt in executor.map_unordered(run_task, tasks):
        if receipt.part >= 0:  # a shard task: the checkpoint is done when its last part is
            done = parts.setdefault(receipt.relpath, [])
            done.append(receipt)
            if len(done) < counts[receipt.relpath]:
                continue
            receipt = finish_parts(wholes[receipt.relpath], parts.pop(receipt.relpath))
        report.add(receipt)
        if progress is not None:
            progress(receipt)
    work.cache.prune(work.relpaths)
    # a run of enough new fragments: one file a table
    compact_if_due(work.cache.dir, changed=report.computed > 0, on_run=on_compact)
    report.failures.sort(key=lambda f: f.relpath)
    report.seconds = time.perf_counter() - start
    return report


def shard_tasks(tasks: list[CheckpointTask], parallelism: int, split: bool | None = None) -> list[CheckpointTask]:
    """``tasks`` with each checkpoint of several data files (Hugging Face shards, DCP ``.distcp`` files, ZeRO-3
    optim-states files) replaced by one shard task per file, when ``split`` is True, or (``split=None``) when tasks run in parallel and the checkpoint
    is at least ``SPLIT_MIN_BYTES`` and ``1/(2*parallelism)`` of the bytes to do: a checkpoint that would keep one
    worker busy while others idle. Smaller ones stay whole: each part lists the checkpoint (and its neighbours)
    again, which costs more than it saves when the checkpoints alone already fill the workers."""
    if split is False or (split is None and parallelism < 2):
        return list(tasks)
    from ckptboard.core.shards import Part, data_files

    todo = sum(t.size for t in tasks)
    out: list[CheckpointTask] = []
    for task in tasks:
        worth = split or (task.size >= SPLIT_MIN_BYTES and task.size * 2 * parallelism >= todo)
        files = data_files(Path(task.root) / task.relpath) if worth else None
        if not files or len(files) < 2:
            out.append(task)
            continue
        out += [replace(task, part=Part(i, len(files), names)) for i, names in enumerate(files)]
    return out


def summarize(root: str | Path, *, device: str = "cpu", workers: int = 1, cache_dir: str | Path | None = None,
              executor: Executor | None = None, progress: Callable[[Receipt], None] | None = None,
              model: Any = None, trust: bool = False, spectral: str = "off",
              limits: WorkerLimits | None = None) -> SummaryReport:
    """Summarise every checkpoint under ``root`` not already in the cache; return what happened. ``limits``: the
    local workers' (:func:`plan` reads a checkpoint recorded past smaller ones again)."""
    start = time.perf_counter()
    device = str(resolve_device(device))
    work = plan(root, cache_dir=cache_dir, device=device, model=model, trust=trust, spectral=spectral, limits=limits)
    if executor is None:
        executor = LocalExecutor(workers, limits=limits)
    report = execute(work, executor, progress)
    report.seconds = time.perf_counter() - start
    return report


def refresh(root: str | Path, *, cache_dir: str | Path | None = None, device: str = "cpu", workers: int = 1,
            executor: Executor | Callable[[Plan], Executor] | None = None, model: Any = None, trust: bool = False,
            progress: Callable[[Receipt], None] | None = None,
            on_plan: Callable[[Plan], None] | None = None, spectral: str = "off",
            limits: WorkerLimits | None = None,
            on_compact: Callable[[str, int], None] | None = None) -> SummaryReport:
    """Plan and execute as one call: the verb the CLI and the app use to bring ROOT's cache up to date.

    ``on_plan(plan)`` runs before any checkpoint is opened (to size a progress bar); ``executor`` may be a function
    of the plan, to size a pool by the work (default: ``LocalExecutor(workers)``). ``seconds`` covers both steps.
    ``limits``: the local workers' (:func:`plan` reads a checkpoint recorded past smaller ones again).
    ``on_compact(run, fragments)``: see :func:`execute`.
    """
    start = time.perf_counter()
    work = plan(root, cache_dir=cache_dir, device=str(resolve_device(device)), model=model, trust=trust,
                spectral=spectral, limits=limits)
    if on_plan is not None:
        on_plan(work)
    if executor is None:
        executor = LocalExecutor(workers, limits=limits)
    elif not isinstance(executor, Executor):
        executor = executor(work)
    report = execute(work, executor, progress, on_compact=on_compact)
    report.seconds = time.perf_counter() - start
    return report


def _spectral_mode(spectral: str) -> str:
    from ckptboard.core.spectral import SpectralMode

    try:
        return str(SpectralMode(spectral))
    except ValueError:
        choices = ", ".join(m.value for m in SpectralMode)
        raise UsageError(f"--spectral {spectral}: unknown; choose from {choices}") from None


def _retry(info: dict[str, Any], trust: bool, limits: WorkerLimits | None, size: int) -> bool:
    """A recorded failure worth reading again: refused as unsafe without --trust and trust is now given, or past a
    worker's limits and these are larger."""
    if info.get("error") == UnsafeCheckpointError.__name__:
        return trust and not info.get("trust")
    if info.get("error") == ResourceLimitError.__name__ and limits is not None:
        recorded = info.get("limits")  # absent from a failure cached before limits were recorded: read it once more
        return not isinstance(recorded, dict) or limits.allow_more_than(recorded, size)
    return False


def _cached_receipt(relpath: str, run: str, info: dict[str, Any]) -> Receipt:
    return Receipt(relpath, run, ReceiptStatus.CACHED, error=info.get("error", ""),
                   message=info.get("message", ""), tensors=int(info.get("tensors", 0)))


def _config_fingerprint(path: Path) -> str | None:
    """Without --model, a transformers config.json beside the checkpoint classifies it: its identity joins the key."""
    from ckptboard.core.hf_model import find_config

    config, _ = find_config(path)
    if config is None:
        return None
    stat = config.stat()
    return f"config.json {stat.st_size} {stat.st_mtime_ns}"


def _model_fingerprint(model: Any) -> str | None:
    """Identity of the classification model: its parameter/buffer names, shapes and requires_grad."""
    if model is None:
        return None
    module = resolve_model(model)  # a bad SPEC fails here, before any checkpoint is opened
    parts = [f"p {n} {tuple(p.shape)} {p.requires_grad}" for n, p in module.named_parameters()]
    parts += [f"b {n} {tuple(b.shape)}" for n, b in module.named_buffers()]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _alias_text(aliases: dict[str, str], shown: int = 3) -> str:
    """``last.ckpt = epoch=0-step=4.ckpt; …`` for the first ``shown`` aliases."""
    text = "; ".join(f"{a} = {o}" for a, o in list(aliases.items())[:shown])
    return text + (f"; {len(aliases) - shown} more" if len(aliases) > shown else "")
