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
    """The candidate rows of a :class:`~ckptboard.core.dataset.TableView` (columns as its selection narrows them)."""
    dataset, selection = view.dataset, view.selection
    tensors = dataset.read(TableName.TENSORS, selection)
    updates = dataset.read(TableName.UPDATES, selection)
    t_key, u_key = _key(tensors), _key(updates)
    keys = pa.concat_arrays([
        _non_finite_keys(tensors, t_key), _exploding_keys(tensors, t_key, explode_factor), _unchanged_keys(updates, u_key),
    ]).unique()
    tensor_rows = pc.is_in(t_key, value_set=keys)
    update_rows = pc.or_(pc.is_in(u_key, value_set=keys), _largest_rows(updates, largest))
    return HealthRows(tensors.filter(tensor_rows).to_pandas(), updates.filter(update_rows).to_pandas(),
                      view.batchnorm)


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


def _largest_rows(u: pa.Table, largest: int) -> pa.Array:
    """Finite parameter update ratios at least each run's ``largest``-th largest (ties kept: the check breaks them
    by row order, which the filter keeps)."""
    ratio = u.column("update_ratio").cast(pa.float64())
    finite = pc.and_(_is_parameter(u), pc.fill_null(pc.is_finite(ratio), False).combine_chunks())
    run = pc.fill_null(u.column("run").cast(pa.string()), _NULL).combine_chunks()
    keep = pa.array(np.zeros(u.num_rows, dtype=bool))
    for value in pc.unique(run.filter(finite)).to_pylist():
        mine = pc.and_(finite, pc.equal(run, value))
        values = ratio.filter(mine).to_numpy()
        floor = np.partition(values, -largest)[-largest] if len(values) > largest else values.min()
        keep = pc.or_(keep, pc.and_(mine, pc.fill_null(pc.greater_equal(ratio, floor), False).combine_chunks()))
    return keep
