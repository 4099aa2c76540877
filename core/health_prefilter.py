"""The rows the health checks can use, found by filters pushed down into the stats dataset, so that only those
become pandas.

At 1M tensor rows the checks in pandas over whole tables held ~500 MB, and most rows can never be a finding. Each
check's candidates are found by a narrow read whose filter Parquet's statistics can answer without decoding most
files (a count that is never non-zero, an update norm that is never zero, a ratio below the floor), or by one
threshold-free aggregate per tensor name (the exploding test). :func:`~ckptboard.core.health.health_table` then runs
unchanged on:

- the tensors table: every row of every tensor whose name is a candidate (non-finite, exploding, unchanged). A name
  stands for every ``(run, group)`` that has it, so each tensor read is read whole and the checks, which count and
  take first/last rows per tensor, judge it exactly as over the whole table;
- the updates table: every row of the names that may be unchanged, and every update whose ratio reaches its run's
  ``largest``-th largest (ties kept, in the whole table's row order). A tensor read only in part has a non-zero
  update in it, so it is never judged unchanged; rows below a run's floor never reach its top ``largest``;
- the batchnorm table: the rows at each run's last step only (what the dead-channel check reads).

So the findings are the whole tables' by construction (tests compare the two).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ckptboard.core.records import TensorKind
from ckptboard.core.schema import TableName

__all__ = ["HealthRows", "health_rows"]

_PARAMETER = str(TensorKind.PARAMETER)


@dataclass
class HealthRows:
    """The three tables the health checks read, cut to the rows that can matter."""

    tensors: pd.DataFrame
    updates: pd.DataFrame
    batchnorm: pd.DataFrame


def health_rows(view, explode_factor: float, largest: int) -> HealthRows:
    """The candidate rows of a :class:`~ckptboard.core.dataset.TableView` (columns as its selection narrows them)."""
    dataset, selection = view.dataset, view.selection
    unchanged = _unchanged_names(dataset, selection)
    names = _non_finite_names(dataset, selection) | _exploding_names(dataset, selection, explode_factor) | unchanged
    floor = _lowest_floor(dataset, selection, largest)
    top = None if floor is None else _FINITE_RATIO & (pc.field("update_ratio") >= floor)
    tensors = _read_where(dataset, TableName.TENSORS, selection, _name_in(names))
    updates = _read_where(dataset, TableName.UPDATES, selection, _any_of(_name_in(unchanged), top))
    return HealthRows(tensors.to_pandas(), updates.to_pandas(), _last_batchnorm(dataset, selection).to_pandas())


_PARAMETER_ROW = pc.field("kind") == _PARAMETER
_FINITE_RATIO = _PARAMETER_ROW & pc.is_finite(pc.field("update_ratio"))


def _read_where(dataset, table: TableName, selection, where: ds.Expression | None) -> pa.Table:
    """Every column (of the selection) of ``table``'s rows that ``where`` keeps; no rows (no file opened) without it."""
    if where is None:
        return dataset.read(table, selection.narrow(checkpoints=()))
    return dataset.read(table, selection, where=where)


def _names(dataset, table: TableName, selection, where: ds.Expression) -> set[str | None]:
    return set(pc.unique(dataset.read(table, selection, columns=["name"], sort=False, where=where)
                         .column("name")).to_pylist())


def _name_in(names: set[str | None]) -> ds.Expression | None:
    """Rows whose name is one of ``names`` (a missing name is one too); None for no names."""
    if not names:
        return None
    expression = pc.field("name").isin(sorted(n for n in names if n is not None))
    return expression | pc.field("name").is_null() if None in names else expression


def _any_of(*expressions: ds.Expression | None) -> ds.Expression | None:
    """Rows that any of ``expressions`` keeps (None ones keep none)."""
    given = [e for e in expressions if e is not None]
    return functools.reduce(operator.or_, given) if given else None


def _non_finite_names(dataset, selection) -> set[str | None]:
    """Names of tensors with a NaN or ±Inf in some checkpoint (files whose counts are all zero are skipped unread)."""
    where = (pc.field("nans") != 0) | (pc.field("posinfs") != 0) | (pc.field("neginfs") != 0)
    return _names(dataset, TableName.TENSORS, selection, where)


def _exploding_names(dataset, selection, factor: float) -> set[str | None]:
    """Names of parameters whose largest positive norm exceeds ``factor`` × their smallest (over every run and group
    that has the name).

    A superset of the check's findings: a row's ratio ``norm / first`` (``first`` > 0) is at most ``max / min``, and
    IEEE division is monotone in each operand, so ``fl(norm / first) > factor`` implies ``fl(max / min) > factor``.
    """
    rows = dataset.read(TableName.TENSORS, selection, columns=["name", "norm"], sort=False,
                        where=_PARAMETER_ROW & (pc.field("norm") > 0))
    spread = rows.group_by("name", use_threads=False).aggregate([("norm", "min"), ("norm", "max")])
    hit = pc.fill_null(pc.greater(pc.divide(spread.column("norm_max"), spread.column("norm_min")), factor), False)
    return set(spread.column("name").filter(hit).to_pylist())


def _unchanged_names(dataset, selection) -> set[str | None]:
    """Names of parameters with a zero update somewhere: a tensor every update of which is zero has one."""
    return _names(dataset, TableName.UPDATES, selection, _PARAMETER_ROW & (pc.field("update_norm") == 0))


def _lowest_floor(dataset, selection, largest: int) -> float | None:
    """The lowest over the runs of each run's ``largest``-th largest finite parameter update ratio (its smallest
    when it has fewer); None without one."""
    rows = dataset.read(TableName.UPDATES, selection, columns=["run", "update_ratio"], sort=False,
                        where=_FINITE_RATIO)
    if rows.num_rows == 0:
        return None
    runs = pc.dictionary_encode(rows.column("run")).combine_chunks()
    codes = runs.indices.to_numpy(zero_copy_only=False)
    ratios = rows.column("update_ratio").to_numpy()
    floors = []
    for code in np.unique(codes):
        values = ratios[codes == code]
        floors.append(np.partition(values, -largest)[-largest] if len(values) > largest else values.min())
    return float(min(floors))


def _last_batchnorm(dataset, selection) -> pa.Table:
    """The batchnorm rows at each run's largest step (the dead-channel check reads no other), in the whole table's
    order: one read of two columns, then one of each run's last step."""
    steps = dataset.read(TableName.BATCHNORM, selection, columns=["run", "step"], sort=False)
    last = steps.group_by("run", use_threads=False).aggregate([("step", "max")])
    parts = [dataset.read(TableName.BATCHNORM, selection.narrow(runs=(run,), steps=(step, step)))
             for run, step in sorted((r, s) for r, s in zip(last.column("run").to_pylist(),
                                                             last.column("step_max").to_pylist())
                                     if r is not None and s is not None)]
    return pa.concat_tables(parts) if parts else dataset.read(TableName.BATCHNORM, selection.narrow(checkpoints=()))
