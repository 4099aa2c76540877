"""The merge step of shard tasks: each part's rows and chunk sums kept on disk, then one checkpoint's tables.

A part (:class:`ckptboard.core.shards.Part`) writes, under ``CACHE/.parts/<stem>/``, one Parquet file per table
(``<table>-<index>.parquet``: the table's columns plus ``_order``, the tensor's place in the checkpoint) and one of
its split tensors' chunk sums (``sums-<index>.parquet``: the :class:`~ckptboard.core.stats._Acc` fields, the bf16
code counts as sparse ``codes``/``counts`` lists, the six update sums). Nothing reads that folder but
:func:`merge_parts`, which runs once every part of the checkpoint has succeeded: per-tensor rows in tensor order,
split tensors' statistics merged (:func:`ckptboard.core.shards.merge_chunk_sums`) into the rows the part holding
their first chunk wrote, the lead part's checkpoint-level rows as they are. The caller then writes the fragment,
commit record last, exactly as one task would, and removes the folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ckptboard.core.atomic import atomic_write
from ckptboard.core.cache import PARTS_DIRNAME
from ckptboard.core.histogram import N_CODES
from ckptboard.core.rows import UPDATE_STAT_COLUMNS, _histogram_row
from ckptboard.core.schema import TableName, arrow_schema
from ckptboard.core.shards import ChunkSums, merge_chunk_sums
from ckptboard.core.stats import _Acc

__all__ = ["PARTS_DIRNAME", "parts_dir", "write_part", "merge_parts", "remove_parts"]

_ORDER = "_order"
_SCALARS = ("numel", "shift", "nfin", "s1", "s2", "sa", "mn", "mx", "zeros", "nans", "posinfs", "neginfs")
_SUMS_SCHEMA = pa.schema(
    [pa.field("order", pa.int64()), pa.field("chunks", pa.int64()), pa.field("index", pa.int64())]
    + [pa.field(n, pa.float64() if n in ("shift", "s1", "s2", "sa", "mn", "mx") else pa.int64()) for n in _SCALARS]
    + [pa.field("low_bits", pa.bool_()), pa.field("codes_only", pa.bool_()),
       pa.field("codes", pa.list_(pa.int32())), pa.field("counts", pa.list_(pa.int64())),
       pa.field("update", pa.list_(pa.float64())), pa.field("has_first", pa.bool_())]
)
_PER_TENSOR = (TableName.TENSORS, TableName.HISTOGRAMS, TableName.UPDATES, TableName.SPECTRAL)


def parts_dir(cache_dir: str | Path, stem: str) -> Path:
    """Where the parts of the checkpoint whose fragment is ``stem`` keep their results until merged."""
    return Path(cache_dir) / PARTS_DIRNAME / stem


def write_part(folder: Path, index: int, rows: dict[TableName, list[dict[str, Any]]],
               partials: list[tuple[int, int, list[ChunkSums]]]) -> None:
    """Part ``index``'s rows and chunk sums, one file per table (each atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in rows.items():
        if not records:
            continue
        schema = arrow_schema(name)
        if name in _PER_TENSOR:
            schema = schema.append(pa.field(_ORDER, pa.int64()))
        table = pa.Table.from_pylist(records, schema=schema)
        atomic_write(folder / f"{name}-{index}.parquet", lambda f, t=table: pq.write_table(t, f))
    records = [_sums_record(order, count, s) for order, count, sums in partials for s in sums]
    table = pa.Table.from_pylist(records, schema=_SUMS_SCHEMA)
    atomic_write(folder / f"sums-{index}.parquet", lambda f: pq.write_table(table, f, compression="zstd"))


def _sums_record(order: int, count: int, s: ChunkSums) -> dict[str, Any]:
    acc = s.acc
    codes = np.flatnonzero(acc.counts)
    return {"order": order, "chunks": count, "index": s.index, **{n: getattr(acc, n) for n in _SCALARS},
            "low_bits": bool(acc.low_bits), "codes_only": bool(acc.codes_only), "codes": codes.astype(np.int32),
            "counts": acc.counts[codes], "update": None if s.update is None else [float(v) for v in s.update],
            "has_first": bool(s.has_first)}


def _by_tensor(files: list[Path]) -> Iterator[tuple[int, int, Iterator[ChunkSums]]]:
    """Every split tensor's ``(order, chunk count, its chunks' sums in chunk order)``, from all parts' files, each
    chunk's dense code counts built only when the fold reaches it (the sparse lists stay in Arrow, never copied)."""
    parts = [_SumsFile(pq.read_table(f, schema=_SUMS_SCHEMA)) for f in files]
    keys = [(p.columns["order"], p.columns["index"], np.full(p.rows, i), np.arange(p.rows))
            for i, p in enumerate(parts)]
    order, index, which, row = (np.concatenate(k) for k in zip(*keys)) if keys else ([],) * 4
    if not len(order):
        return
    sort = np.lexsort((index, order))
    order, which, row = order[sort], which[sort], row[sort]
    starts = np.flatnonzero(np.diff(order, prepend=-1))
    ends = np.append(starts[1:], order.size)
    for start, end in zip(starts, ends):
        first = parts[which[start]]
        yield (int(order[start]), int(first.columns["chunks"][row[start]]),
               (parts[which[i]].chunk(int(row[i])) for i in range(start, end)))


class _SumsFile:
    """One part's chunk sums as NumPy views of its Arrow columns; :meth:`chunk` builds one :class:`ChunkSums`."""

    def __init__(self, table: pa.Table):
        self.rows = table.num_rows
        self.columns = {n: table.column(n).to_numpy() for n in ("order", "chunks", "index", *_SCALARS)}
        self.flags = {n: table.column(n).to_pylist() for n in ("low_bits", "codes_only", "has_first")}
        self.updates = table.column("update").to_pylist()
        codes, counts = (table.column(n).combine_chunks() for n in ("codes", "counts"))  # one chunk: no copy
        self.codes, self.counts = codes.values.to_numpy(), counts.values.to_numpy()
        self.offsets = codes.offsets.to_numpy()

    def chunk(self, i: int) -> ChunkSums:
        dense = np.zeros(N_CODES, dtype=np.int64)
        lo, hi = self.offsets[i], self.offsets[i + 1]
        dense[self.codes[lo:hi]] = self.counts[lo:hi]
        acc = _Acc(**{n: self.columns[n][i].item() for n in _SCALARS}, low_bits=self.flags["low_bits"][i],
                   counts=dense, codes_only=self.flags["codes_only"][i])
        update = None if self.updates[i] is None else np.asarray(self.updates[i], dtype=np.float64)
        return ChunkSums(int(self.columns["index"][i]), acc, update, self.flags["has_first"][i])


def merge_parts(folder: Path, count: int) -> dict[TableName, list[dict[str, Any]]]:
    """The checkpoint's rows from its ``count`` parts' files, as one task makes them."""
    rows: dict[TableName, list[dict[str, Any]]] = {}
    for name in TableName:
        files = [folder / f"{name}-{i}.parquet" for i in range(count)]
        records = [r for f in files if f.exists() for r in pq.read_table(f).to_pylist()]
        if name in _PER_TENSOR:
            records.sort(key=lambda r: r[_ORDER])  # stable: parts in index order, rows in tensor order
        rows[name] = records
    merged = {}
    for order, chunks, sums in _by_tensor([folder / f"sums-{i}.parquet" for i in range(count)]):
        merged[order] = merge_chunk_sums(sums, chunks)
    for name in _PER_TENSOR:
        kept = []
        for record in rows[name]:
            order = record.pop(_ORDER)
            if order in merged and not _fill(name, record, *merged[order]):
                continue
            kept.append(record)
        rows[name] = kept
    expected = [r["n_tensors"] for r in rows[TableName.CHECKPOINTS]]
    if expected != [len(rows[TableName.TENSORS])]:  # a tensor in no part's file would otherwise just be missing
        raise ValueError(f"the shard tasks made rows for {len(rows[TableName.TENSORS])} tensors, the checkpoint "
                         f"lists {expected[0] if expected else 'none'}")
    return rows


def _fill(name: TableName, record: dict[str, Any], stats, update) -> bool:
    """Put a split tensor's merged statistics into its placeholder row; False drops the row (no update
    statistics after all: a chunk's neighbour could not be read)."""
    if name == TableName.TENSORS:
        record.update(stats.as_row())
    elif name == TableName.HISTOGRAMS:
        record.update(_histogram_row(stats.histogram))
    elif name == TableName.UPDATES:
        if update is None:
            return False
        record.update({k: v for k, v in update.as_row().items() if k in UPDATE_STAT_COLUMNS})
    return True


def remove_parts(folder: Path) -> None:
    """Remove one checkpoint's parts folder (merged, failed or abandoned)."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # the last one out removes .parts/
    except OSError:
        pass  # other checkpoints' parts are still there
