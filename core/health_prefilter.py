"""The rows the health checks can use, found in Arrow over the stats dataset, so that only those become pandas.

At 1M tensor rows the checks in pandas over whole tables held ~500 MB; most rows can never be a finding. Each
filter here keeps a superset of what its check reads: every row of a tensor that may be non-finite, may explode or
may be unchanged (the checks count and take first/last rows per tensor), and the update rows that may be among the
largest ratios (ties kept). :func:`~ckptboard.core.health.health_table` then runs unchanged on those rows, so the
findings are the pandas path's by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ckptboard.core.records import TensorKind
from ckptboard.core.schema import TableName

__all__ = ["HealthRows", "health_rows"]

_KEYS = ("run", "group", "name")
_PARAMETER = str(TensorKind.PARAMETER)
_NULL = "\x00"  # stands for a missing key part (a collision only widens the superset)


@dataclass
class HealthRows:
    """The three tables the health checks read, cut to the rows that can matter."""

    tensors: pd.DataFrame
    updates: pd.DataFrame
    batchnorm: pd.DataFrame


def health_rows(view, explode_factor: float, largest: int) -> HealthRows:
    """The candidate rows of a :class:`~ckptboard.core.dataset.TableView` (columns as its selection narrows them).

    Two reads: the few columns the filters need, then every column of the candidates' tensors (and checkpoints)
    alone; at 1M tensor rows with few findings the second read opens a handful of files."""
    dataset, selection = view.dataset, view.selection
    tensors = dataset.read(TableName.TENSORS, selection, columns=_present(selection, _TENSOR_INPUT))
    updates = dataset.read(TableName.UPDATES, selection, columns=_present(selection, _UPDATE_INPUT), sort=False)
    t_key, u_key = _key(tensors), _key(updates)
    keys = pa.concat_arrays([
        _non_finite_keys(tensors, t_key), _exploding_keys(tensors, t_key, explode_factor),
    ]).unique()
    unchanged = _unchanged_keys(updates, u_key)
    floors = _largest_floors(updates, largest)
    top = updates.filter(_largest_rows(updates, floors))
    keys = pa.concat_arrays([keys, unchanged]).unique()
    tensors = _candidates(dataset, TableName.TENSORS, selection, tensors.filter(pc.is_in(t_key, value_set=keys)), None)
    updates = _candidates(dataset, TableName.UPDATES, selection,
                          updates.filter(pc.is_in(u_key, value_set=unchanged)), top)
    update_rows = pc.or_(pc.is_in(_key(updates), value_set=unchanged), _largest_rows(updates, floors))
    return HealthRows(tensors.filter(pc.is_in(_key(tensors), value_set=keys)).to_pandas(),
                      updates.filter(update_rows).to_pandas(), view.batchnorm)


# What the filters read: the tensors in step order (exploding compares with the first norm), the updates in any
# order (their tests are order-free); ``checkpoint`` also prunes the second read to the largest updates' files.
_TENSOR_INPUT = ("run", "checkpoint", "step", "group", "name", "kind", "norm", "nans", "posinfs", "neginfs")
_UPDATE_INPUT = ("run", "checkpoint", "group", "name", "kind", "update_norm", "update_ratio")


def _present(selection, columns: tuple[str, ...]) -> list[str]:
    return [c for c in columns if selection.columns is None or c in selection.columns]


def _candidates(dataset, table: TableName, selection, every_checkpoint: pa.Table, some: pa.Table | None) -> pa.Table:
    """Every column of the rows of ``every_checkpoint``'s tensors in all checkpoints and of ``some``'s rows' tensors in
    their checkpoints (a superset: the caller filters it), read with names (and checkpoints) pushed down."""
    some = some if some is not None else every_checkpoint.slice(0, 0)
    names = set(every_checkpoint.column("name").to_pylist()) | set(some.column("name").to_pylist())
    if selection.names is not None:
        names &= set(selection.names)
    narrowed = selection.narrow(names=tuple(sorted(n for n in names if n is not None)))
    if every_checkpoint.num_rows == 0:
        checkpoints = set(some.column("checkpoint").to_pylist())
        if selection.checkpoints is not None:
            checkpoints &= set(selection.checkpoints)
        narrowed = narrowed.narrow(checkpoints=tuple(sorted(c for c in checkpoints if c is not None)))
    return dataset.read(table, narrowed)


def _key(table: pa.Table) -> pa.Array:
    """``run``, ``group``, ``name`` joined into one string per row."""
    parts = [pc.fill_null(table.column(c).cast(pa.string()), _NULL) for c in _KEYS]
    return pc.binary_join_element_wise(*parts, "\x1f").combine_chunks()


def _nonzero(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.not_equal(column, 0), False)


def _non_finite_keys(t: pa.Table, key: pa.Array) -> pa.Array:
    bad = pc.or_(pc.or_(_nonzero(t.column("nans")), _nonzero(t.column("posinfs"))), _nonzero(t.column("neginfs")))
    return pc.unique(key.filter(bad.combine_chunks()))


def _is_parameter(t: pa.Table) -> pa.Array:
    return pc.fill_null(pc.equal(t.column("kind"), _PARAMETER), False).combine_chunks()


def _exploding_keys(t: pa.Table, key: pa.Array, factor: float) -> pa.Array:
    """Parameters whose largest norm exceeds ``factor`` × their first (rows in step order, NaN/null skipped as
    pandas' ``first`` skips them); the near-zero start test is left to the check."""
    norm = t.column("norm").cast(pa.float64())
    valid = pc.and_(_is_parameter(t), pc.fill_null(pc.invert(pc.is_nan(norm)), False).combine_chunks())
    rows = pa.table({"key": key, "norm": norm}).filter(valid)
    agg = rows.group_by("key", use_threads=False).aggregate([("norm", "first"), ("norm", "max")])
    ratio = pc.divide(agg.column("norm_max"), agg.column("norm_first"))
    hit = pc.fill_null(pc.and_(pc.greater(agg.column("norm_first"), 0), pc.greater(ratio, factor)), False)
    return agg.column("key").filter(hit).combine_chunks()


def _unchanged_keys(u: pa.Table, key: pa.Array) -> pa.Array:
    """Parameters none of whose updates moved (a null or NaN ``update_norm`` counts as moved, as in pandas)."""
    moved = pc.fill_null(pc.not_equal(u.column("update_norm").cast(pa.float64()), 0), True)
    rows = pa.table({"key": key, "moved": moved}).filter(_is_parameter(u))
    agg = rows.group_by("key", use_threads=False).aggregate([("moved", "any")])
    return agg.column("key").filter(pc.invert(agg.column("moved_any"))).combine_chunks()


def _largest_floors(u: pa.Table, largest: int) -> dict[str, float]:
    """Per run, its ``largest``-th largest finite parameter update ratio (the smallest one when it has fewer)."""
    ratio, finite, run = _ratios(u)
    floors = {}
    for value in pc.unique(run.filter(finite)).to_pylist():
        values = ratio.filter(pc.and_(finite, pc.equal(run, value))).to_numpy()
        floors[value] = np.partition(values, -largest)[-largest] if len(values) > largest else values.min()
    return floors


def _ratios(u: pa.Table) -> tuple[pa.ChunkedArray, pa.Array, pa.Array]:
    ratio = u.column("update_ratio").cast(pa.float64())
    finite = pc.and_(_is_parameter(u), pc.fill_null(pc.is_finite(ratio), False).combine_chunks())
    return ratio, finite, pc.fill_null(u.column("run").cast(pa.string()), _NULL).combine_chunks()


def _largest_rows(u: pa.Table, floors: dict[str, float]) -> pa.Array:
    """Finite parameter update ratios at least their run's floor (ties kept: the check breaks them by row order,
    which every filter keeps)."""
    ratio, finite, run = _ratios(u)
    keep = pa.array(np.zeros(u.num_rows, dtype=bool))
    for value, floor in floors.items():
        mine = pc.and_(finite, pc.equal(run, value))
        keep = pc.or_(keep, pc.and_(mine, pc.fill_null(pc.greater_equal(ratio, floor), False).combine_chunks()))
    return keep
