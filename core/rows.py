"""One opened checkpoint (and its run's previous and first checkpoints) -> the rows of every statistics table.

Plain arguments in, plain row dicts out (table name -> rows, columns of :mod:`ckptboard.core.schema`): no task, no
cache, no file opened here. Large tensors are loaded one at a time (with their previous/first versions beside them);
small ones (at most ``EXACT_PERCENTILE_NUMEL`` elements, on CPU) are read and reduced in batches of up to
``BATCH_ELEMENTS`` elements (:mod:`ckptboard.core.batch_stats`: the same numbers, without the per-tensor Python
cost), in file order, so that side effects (spectral rows, norm layers' running statistics) keep the file's order.
A tensor tied to one already done reuses its numbers. Histogram rows hold NumPy arrays or lists.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch

from ckptboard.core.errors import CheckpointError
from ckptboard.core.gcfreeze import freeze_in_worker
from ckptboard.core.records import TensorInfo, TensorKind, Trainable
from ckptboard.core.schema import EventKind, RunningStat, TableName
from ckptboard.core.gradients import gradient_rows
from ckptboard.core.spectral import SpectralMode, alpha_band, spectral_stats
from ckptboard.core.batch_stats import BATCH_ELEMENTS, batchable, small_stats, small_updates
from ckptboard.core.shards import ChunkSums, Part, chunk_sums, merge_chunk_sums, split_chunks
from ckptboard.core.stats import EXACT_PERCENTILE_NUMEL, STAT_COLUMNS, tensor_stats
from ckptboard.core.updates import UpdateStats, norm_running_stats, update_stats

__all__ = ["RowSource", "checkpoint_rows", "part_rows", "UPDATE_STAT_COLUMNS"]

UPDATE_STAT_COLUMNS: tuple[str, ...] = tuple(UpdateStats.__dataclass_fields__)


@dataclass(frozen=True)
class RowSource:
    """Where the rows come from: the checkpoint's run and relative path, its previous checkpoint's relative path
    (None for a run's first) and its identity as listed (size, mtime_ns)."""

    run: str
    relpath: str
    prev_relpath: str | None
    size: int
    mtime_ns: int


def checkpoint_rows(source: RowSource, ckpt, prev=None, first=None, *, device: str = "cpu",
                    spectral: str = "off") -> dict[TableName, list[dict[str, Any]]]:
    """The rows of every table for the opened, classified ``ckpt``; ``prev``/``first`` (opened, or None) give the
    update statistics and the added/removed/reshaped events; ``spectral`` (a :class:`SpectralMode`) the spectral
    rows of its parameters; its optimizer state (if any) the gradients rows."""
    freeze_in_worker()  # the long-lived objects of a worker, out of the cycle collector's way (core.gcfreeze)
    rows = _Rows(source, ckpt, prev, first, device, SpectralMode(spectral))
    rows.collect()
    return rows.tables


def part_rows(source: RowSource, ckpt, prev, first, part: Part, *, device: str = "cpu", spectral: str = "off"
              ) -> tuple[dict[TableName, list[dict[str, Any]]], list[tuple[int, int, list[ChunkSums]]]]:
    """The rows ``part`` of ``ckpt`` makes (:mod:`ckptboard.core.shards`), each per-tensor row tagged ``_order`` (the
    tensor's place in the checkpoint), and ``(order, chunk count, sums)`` of its chunks of split tensors; a split
    tensor's rows (written by the part holding its first chunk) have no statistics until they are merged."""
    rows = _Rows(source, ckpt, prev, first, device, SpectralMode(spectral), part)
    rows.collect()
    return rows.tables, rows.partials


class _Rows:
    """Builds the table rows of one checkpoint, loading one tensor (and its previous/first) at a time."""

    def __init__(self, source: RowSource, ckpt, prev, first, device: str, spectral: SpectralMode,
                 part: Part | None = None):
        self.source, self.ckpt, self.prev, self.first, self.device = source, ckpt, prev, first, device
        self.spectral = spectral
        self.part = part
        self.partials: list[tuple[int, int, list[ChunkSums]]] = []
        self._split_sums: dict[tuple[str, str], tuple[int, list[ChunkSums]]] = {}  # in a part, by (group, name)
        self.base = {"run": source.run, "checkpoint": source.relpath, "step": ckpt.step}
        self.tables: dict[TableName, list[dict[str, Any]]] = {
            name: [] for name in TableName if name != TableName.ERRORS
        }
        self._running: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def collect(self) -> None:
        prev_index = _index(self.prev)
        first_index = _index(self.first)
        done: dict[tuple[str, str], tuple[dict | None, dict | None, dict | None]] = {}
        part = self.part
        held: list[tuple[int, TensorInfo]] = []  # the tensors whose rows this checkpoint (or part) makes, in order
        computed: set[tuple[str, str]] = set()
        pending: list[tuple[int, TensorInfo]] = []  # small tensors waiting for their batch, in file order
        pending_numel = 0
        small = self.device == "cpu"
        for order, info in enumerate(self.ckpt.tensors):
            ident = (info.group, info.name)
            tied = (info.group, info.tied_to) if info.tied_to else None
            chunks = split_chunks(self.ckpt, info)
            if part is not None and not part.holds(self.ckpt, info, chunks):
                continue
            held.append((order, info))
            if tied in computed:  # the same storage: the same numbers, computed once
                if tied in self._split_sums:  # a tied split tensor's placeholder rows merge the same sums
                    self.partials.append((order, *self._split_sums[tied]))
                continue
            computed.add(ident)
            if chunks is None and small and info.numel <= EXACT_PERCENTILE_NUMEL:
                pending.append((order, info))
                pending_numel += info.numel
                if pending_numel >= BATCH_ELEMENTS:
                    self._batch(pending, prev_index, first_index, done)
                    pending, pending_numel = [], 0
                continue
            self._batch(pending, prev_index, first_index, done)  # side effects (spectral, running stats) in order
            pending, pending_numel = [], 0
            if chunks is not None:
                done[ident] = self._split(order, info, chunks, prev_index.get(ident), first_index.get(ident))
            else:
                tensor = self.ckpt.load(info)
                done[ident] = self._one(order, info, tensor, prev_index.get(ident), first_index.get(ident))
                del tensor
        self._batch(pending, prev_index, first_index, done)
        for order, info in held:
            ident = (info.group, info.name)
            stats, hist, update = done[ident] if ident in done else done[(info.group, info.tied_to)]
            if stats is None:
                continue  # chunks of a tensor whose rows the part holding its first chunk writes
            tag = self._tag_of(order)
            self.tables[TableName.TENSORS].append({**self.base, **_identity_row(info), **stats, **tag})
            self.tables[TableName.HISTOGRAMS].append({**self.base, "group": info.group, "name": info.name, **hist,
                                                      **tag})
            if update is not None:
                self.tables[TableName.UPDATES].append({**self._update_base(), "group": info.group, "name": info.name,
                                               "module": info.module, "kind": str(info.kind), **update, **tag})
        if part is not None:
            if not part.lead:
                return  # the checkpoint-level rows are the lead part's
            self._keep_running_stats()
        self._batchnorm_rows()
        self._event_rows(prev_index)
        self._gradient_rows()
        self.tables[TableName.CHECKPOINTS] = [self._checkpoint_row()]

    def _tag_of(self, order: int) -> dict[str, int]:
        """In a part, ``{"_order": order}`` for the rows of the checkpoint's tensor number ``order``; else nothing."""
        return {} if self.part is None else {"_order": order}

    def _one(self, order: int, info: TensorInfo, tensor, prev_info: TensorInfo | None,
             first_info: TensorInfo | None):
        """One tensor through the per-tensor path: (statistics row, histogram row, update row or None)."""
        result = tensor_stats(tensor, device=self.device)
        update = self._update(info, tensor, prev_info, first_info)
        if self.part is None:  # a part's lead keeps them in one pass (_keep_running_stats)
            self._keep_running_stat(info, tensor)
        self._spectral(order, info, tensor)
        return result.as_row(), _histogram_row(result.histogram), update

    def _batch(self, pending: list[tuple[int, TensorInfo]], prev_index, first_index, done: dict) -> None:
        """Small tensors (with their order in the checkpoint) read together and reduced by one kernel call
        (:mod:`ckptboard.core.batch_stats`), their update statistics too; a tensor the batched path does not take
        goes through :meth:`_one`."""
        if not pending:
            return
        infos = [info for _, info in pending]
        tensors = self.ckpt.load_many(infos)
        fits = [i for i, t in enumerate(tensors) if batchable(t)]
        batch = small_stats([tensors[i] for i in fits])
        rows = batch.rows()
        neighbours = self._neighbours([infos[i] for i in fits], prev_index, first_index)
        triples, with_update = [], []
        for j, i in enumerate(fits):
            pair = neighbours[j]
            if pair is None:
                continue
            prev_tensor, first_tensor = pair
            if batchable(prev_tensor) and (first_tensor is None or batchable(first_tensor)):
                triples.append((tensors[i], prev_tensor, first_tensor))
                with_update.append(j)
        updates = dict(zip(with_update, small_updates(triples)))
        for j, i in enumerate(fits):
            info, tensor = infos[i], tensors[i]
            update = updates.get(j)
            if update is None and neighbours[j] is not None:  # a neighbour the batch does not take
                prev_tensor, first_tensor = neighbours[j]
                update = update_stats(prev_tensor, tensor, first_tensor, device=self.device).as_row()
            lo, hi, counts = batch.histogram_arrays(j)
            done[(info.group, info.name)] = (rows[j], {"lo": lo, "hi": hi, "counts": counts}, update)
            if self.part is None:
                self._keep_running_stat(info, tensor)
            self._spectral(pending[i][0], info, tensor)
        taken = set(fits)
        for i, info in enumerate(infos):
            if i not in taken:
                ident = (info.group, info.name)
                done[ident] = self._one(pending[i][0], info, tensors[i], prev_index.get(ident), first_index.get(ident))

    def _neighbours(self, infos: list[TensorInfo], prev_index, first_index) -> list[tuple | None]:
        """Per tensor: its (previous, first or None) versions for the update statistics, or None (no previous of
        its shape, or unreadable), as :meth:`_update` decides, each neighbour read in one batch."""
        want_prev, want_first = [], []
        for info in infos:
            ident = (info.group, info.name)
            prev_info, first_info = prev_index.get(ident), first_index.get(ident)
            same = prev_info is not None and tuple(prev_info.shape) == tuple(info.shape)
            want_prev.append(prev_info if same else None)
            same_first = same and first_info is not None and tuple(first_info.shape) == tuple(info.shape)
            want_first.append(first_info if same_first and self.first is not self.prev else None)
        prevs = _load_many_or_none(self.prev, want_prev)
        firsts = _load_many_or_none(self.first, want_first)
        out: list[tuple | None] = []
        for info, prev_tensor, first_tensor in zip(infos, prevs, firsts):
            if prev_tensor is None:
                out.append(None)
                continue
            if self.first is self.prev:
                first_info = first_index.get((info.group, info.name))
                same = first_info is not None and tuple(first_info.shape) == tuple(info.shape)
                first_tensor = prev_tensor if same else None
            out.append((prev_tensor, first_tensor))
        return out

    def _update(self, info: TensorInfo, tensor, prev_info: TensorInfo | None, first_info: TensorInfo | None):
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
        return update_stats(prev_tensor, tensor, first_tensor, device=self.device).as_row()

    def _split(self, order: int, info: TensorInfo, chunks: list, prev_info: TensorInfo | None,
               first_info: TensorInfo | None) -> tuple[dict | None, dict | None, dict | None]:
        """A tensor split into DCP chunks: its statistics chunk by chunk, merged (in a part: its chunks' sums kept
        for the merge, and placeholder rows from the part holding the first chunk). Spectral statistics and a norm
        layer's running statistics need the whole tensor: for those (a matrix, a vector of channels) it is read."""
        prev_ok = prev_info is not None and tuple(prev_info.shape) == tuple(info.shape)
        first_ok = prev_ok and first_info is not None and tuple(first_info.shape) == tuple(info.shape)
        part = self.part
        sums = chunk_sums(self.ckpt, info, chunks, files=None if part is None else part.files,
                          prev=self.prev if prev_ok else None, prev_info=prev_info if prev_ok else None,
                          first=self.first if first_ok else None, first_info=first_info if first_ok else None,
                          device=self.device)
        owner = part is None or chunks[0].file in part.files
        if owner and self._wants_spectral(info):
            self._spectral(order, info, self.ckpt.load(info))
        if part is not None:
            self.partials.append((order, len(chunks), sums))
            self._split_sums[(info.group, info.name)] = (len(chunks), sums)
            if not owner:
                return None, None, None
            return ({name: None for name in STAT_COLUMNS}, _histogram_row(None),
                    {name: None for name in UPDATE_STAT_COLUMNS} if prev_ok else None)
        if _is_running_stat(info):
            self._keep_running_stat(info, self.ckpt.load(info))
        stats, update = merge_chunk_sums(sums, len(chunks))
        return stats.as_row(), _histogram_row(stats.histogram), None if update is None else update.as_row()

    def _wants_spectral(self, info: TensorInfo) -> bool:
        return self.spectral is not SpectralMode.OFF and info.kind == TensorKind.PARAMETER

    def _spectral(self, order: int, info: TensorInfo, tensor) -> None:
        if not self._wants_spectral(info):
            return
        stats = spectral_stats(tensor, self.spectral, device=self.device)
        if stats is not None:
            self.tables[TableName.SPECTRAL].append({
                **self.base, "group": info.group, "name": info.name, "module": info.module, **stats.as_row(),
                "alpha_band": str(alpha_band(stats.alpha)), **self._tag_of(order),
            })

    def _keep_running_stats(self) -> None:
        """The lead part's pass over the norm layers' running statistics (tiny vectors, in any of the files), in
        tensor order, as one task keeps them."""
        for info in self.ckpt.tensors:
            if _is_running_stat(info) and not info.tied_to:
                self._keep_running_stat(info, self.ckpt.load(info))

    def _gradient_rows(self) -> None:
        if not self.ckpt.optimizers:
            return
        try:
            rows, _ = gradient_rows(self.ckpt, device=self.device)
        except CheckpointError:
            return  # a damaged optimizer state costs the gradient rows, not the model tensors' statistics
        self.tables[TableName.GRADIENTS] = [{**self.base, **row} for row in rows]

    def _update_base(self) -> dict[str, Any]:
        return {**self.base, "prev_checkpoint": self.source.prev_relpath, "prev_step": self.prev.step}

    def _keep_running_stat(self, info: TensorInfo, tensor) -> None:
        module, _, leaf = info.name.rpartition(".")
        if leaf in set(RunningStat) and info.kind == TensorKind.BUFFER and tensor.dim() == 1:
            self._running.setdefault((info.group, module), {})[leaf] = tensor.detach().to("cpu", copy=True)

    def _batchnorm_rows(self) -> None:
        for (group, module), stats in self._running.items():
            mean, var = stats.get(RunningStat.RUNNING_MEAN), stats.get(RunningStat.RUNNING_VAR)
            if len(stats) != len(RunningStat) or mean is None or var is None or mean.shape != var.shape:
                continue  # not a norm layer's pair of running statistics
            rows = norm_running_stats(module, mean, var)
            self.tables[TableName.BATCHNORM] += [{**self.base, "group": group, **row} for row in rows]

    def _event_rows(self, prev_index: dict[tuple[str, str], TensorInfo]) -> None:
        if self.prev is None:
            return
        current = _index(self.ckpt)
        events = []
        for ident, info in current.items():
            before = prev_index.get(ident)
            if before is None:
                events.append((ident, EventKind.ADDED, f"{_shape(info.shape)} {info.dtype}"))
            elif tuple(before.shape) != tuple(info.shape):
                events.append((ident, EventKind.RESHAPED, f"{_shape(before.shape)} -> {_shape(info.shape)}"))
        for ident, info in prev_index.items():
            if ident not in current:
                events.append((ident, EventKind.REMOVED, f"{_shape(info.shape)} {info.dtype}"))
        for (group, name), event, detail in events:
            self.tables[TableName.EVENTS].append({**self.base, "group": group, "name": name, "event": event.value,
                                          "detail": detail})

    def _checkpoint_row(self) -> dict[str, Any]:
        ckpt, source = self.ckpt, self.source
        counted = [t for t in ckpt.tensors if not t.tied_to]  # tied tensors share storage: counted once
        params = [t for t in counted if t.kind == TensorKind.PARAMETER]
        buffers = [t for t in counted if t.kind == TensorKind.BUFFER]
        return {
            **self.base,
            "step_source": str(ckpt.step_source),
            "format": str(ckpt.format),
            "size_bytes": source.size,
            "mtime": source.mtime_ns / 1e9,
            "n_tensors": len(ckpt.tensors),
            "n_parameters": len(params),
            "n_trainable": sum(1 for t in params if t.trainable == Trainable.TRUE),
            "n_frozen": sum(1 for t in params if t.trainable == Trainable.FALSE),
            "n_buffers": len(buffers),
            "parameter_bytes": sum(t.nbytes for t in params),
            "buffer_bytes": sum(t.nbytes for t in buffers),
            "optimizer": _optimizer_text(ckpt.optimizers),
            "metadata_json": json.dumps(ckpt.metadata, sort_keys=True, default=str),
            "skipped_globals": "; ".join(ckpt.skipped_globals),
        }


def _is_running_stat(info: TensorInfo) -> bool:
    """A 1-D buffer named like a norm layer's running statistic (``_keep_running_stat`` then checks the tensor)."""
    return info.name.rpartition(".")[2] in set(RunningStat) and info.kind == TensorKind.BUFFER and len(info.shape) == 1


def _load_many_or_none(ckpt, infos: list[TensorInfo | None]) -> list:
    """``ckpt.load_many`` of the infos given (None where None); a batch that fails is read one by one, each
    unreadable tensor None (as :func:`_load_or_none`)."""
    wanted = [i for i, info in enumerate(infos) if info is not None]
    out: list = [None] * len(infos)
    if not wanted:
        return out
    try:
        tensors = ckpt.load_many([infos[i] for i in wanted])
    except CheckpointError:
        tensors = [_load_or_none(ckpt, infos[i]) for i in wanted]
    for i, tensor in zip(wanted, tensors):
        out[i] = tensor
    return out


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
    return _shape_text(tuple(int(s) for s in shape))


@functools.lru_cache(maxsize=4096)
def _shape_text(shape: tuple[int, ...]) -> str:
    """``[8, 16]``: a series repeats a few shapes thousands of times."""
    return json.dumps(list(shape))


def _histogram_row(histogram) -> dict[str, Any]:
    """The histogram's arrays as they are (the fragment writer takes arrays or lists)."""
    if histogram is None:
        return {"lo": [], "hi": [], "counts": []}
    return {"lo": histogram.lo, "hi": histogram.hi, "counts": histogram.counts}


def _optimizer_text(optimizers) -> str:
    """``key_path: N params, state a,b`` per optimizer found, ``; ``-joined (empty when none)."""
    parts = []
    for opt in optimizers:
        names = ",".join(opt.state_names)
        parts.append(f"{opt.key_path}: {len(opt.params)} params" + (f", state {names}" if names else ""))
    return "; ".join(parts)
