"""The rows the health checks can use, found by one narrow scan of the tensors and one of the updates, so that only
those rows become pandas.

At 1M tensor rows the checks in pandas over whole tables held ~500 MB, and most rows can never be a finding; at
300 checkpoint files each scan of a table costs ~0.2 s before its first row, so each table is scanned once, for the
few columns the tests need (:class:`Digest`: threshold-free, so it can be kept while thresholds change), and the
candidates' rows are read after. :func:`~ckptboard.core.health.health_table` then runs unchanged on:

- the tensors table: every row of every tensor whose name is a candidate (non-finite, may explode, may be
  unchanged). A name stands for every ``(run, group)`` that has it, so each tensor read is read whole and the checks,
  which count and take first/last rows per tensor, judge it exactly as over the whole table;
- the updates table: every row of the names that may be unchanged, and every update whose finite ratio reaches its
  run's ``largest``-th largest (ties kept, in the whole table's row order; only the checkpoints holding one are
  opened). A tensor read only in part has a non-zero update in it, so it is never judged unchanged; rows below a
  run's floor never reach its top ``largest``;
- the batchnorm table: the rows at each run's last step only (all the dead-channel check reads).

So the findings are the whole tables' by construction (tests compare the two).
"""

from __future__ import annotations

import functools
import operator
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ckptboard.core.records import TensorKind
from ckptboard.core.schema import TableName

__all__ = ["Digest", "HealthRows", "digest", "health_rows"]

_PARAMETER = str(TensorKind.PARAMETER)


@dataclass
class HealthRows:
    """The three tables the health checks read, cut to the rows that can matter."""

    tensors: pd.DataFrame
    updates: pd.DataFrame
    batchnorm: pd.DataFrame


@dataclass
class Digest:
    """What the candidate tests need of one selection, whatever the thresholds: tensor names with a non-finite
    value or a zero update, each name's smallest and largest positive parameter norm, and the update-ratio floors."""

    non_finite: set[str | None] = field(default_factory=set)
    unchanged: set[str | None] = field(default_factory=set)
    spread: pa.Table | None = None  # name, norm_min, norm_max
    floor: float | None = None  # the lowest run's floor; None without a finite parameter ratio
    top_checkpoints: tuple[str, ...] | None = None  # the checkpoints holding a ratio at their run's floor (None: all)

    def exploding(self, factor: float) -> set[str | None]:
        """Names whose norms spread more than ``factor``: a superset of the exploding check's findings, since a row's
        ``norm / first`` (``first`` > 0) is at most ``max / min`` and IEEE division is monotone in each operand."""
        if self.spread is None or self.spread.num_rows == 0:
            return set()
        ratio = pc.divide(self.spread.column("norm_max"), self.spread.column("norm_min"))
        return set(self.spread.column("name").filter(pc.fill_null(pc.greater(ratio, factor), False)).to_pylist())


def health_rows(view, explode_factor: float, largest: int) -> HealthRows:
    """The candidate rows of a :class:`~ckptboard.core.dataset.TableView` (columns as its selection narrows them).

    The view's :class:`Digest` is kept with its dataset (the last few selections), so that a change of threshold
    reads only the candidates."""
    dataset, selection = view.dataset, view.selection
    found = _kept_digest(view, largest)
    names = found.non_finite | found.exploding(explode_factor) | found.unchanged
    tensors = _read_where(dataset, TableName.TENSORS, selection, _name_in(names))
    top = None if found.floor is None else _FINITE_RATIO & (pc.field("update_ratio") >= found.floor)
    if found.unchanged or found.top_checkpoints is None:
        updates = _read_where(dataset, TableName.UPDATES, selection, _any_of(_name_in(found.unchanged), top))
    else:  # only the few checkpoints that hold the largest ratios are opened
        updates = _read_where(dataset, TableName.UPDATES, selection.narrow(checkpoints=found.top_checkpoints), top)
    return HealthRows(tensors.to_pandas(), updates.to_pandas(), _last_batchnorm(dataset, selection).to_pandas())


_KEPT_SELECTIONS = 4  # per dataset: the sidebar's last few filters
_kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # dataset -> {(selection, largest): Digest}
_kept_lock = threading.Lock()


def _kept_digest(view, largest: int) -> Digest:
    """:func:`digest` of ``view``, computed once per dataset (one cache state), selection and ``largest``."""
    key = (repr(view.selection), largest)
    with _kept_lock:
        found = _kept.get(view.dataset, {}).get(key)
    if found is None:
        found = digest(view, largest)
        with _kept_lock:
            kept = _kept.setdefault(view.dataset, {})
            kept[key] = found
            while len(kept) > _KEPT_SELECTIONS:
                kept.pop(next(iter(kept)))
    return found


def digest(view, largest: int) -> Digest:
    """The :class:`Digest` of a view: one scan of six tensors columns, then one of six updates columns (one after the
    other: side by side they held both scans at once, ~100 MB more at 1M rows, for no gain on a busy machine)."""
    non_finite, spread = _tensor_digest(view.dataset, view.selection)
    unchanged, floor, top_checkpoints = _update_digest(view.dataset, view.selection, largest)
    return Digest(non_finite, unchanged, spread, floor, top_checkpoints)


def _tensor_digest(dataset, selection) -> tuple[set[str | None], pa.Table]:
    """Names with a non-finite count, and each name's smallest and largest positive parameter norm."""
    tensors = dataset.read(TableName.TENSORS, selection, sort=False,
                           columns=["name", "kind", "norm", "nans", "posinfs", "neginfs"])
    counts = [pc.fill_null(pc.not_equal(tensors.column(c), 0), False) for c in ("nans", "posinfs", "neginfs")]
    non_finite = set(pc.unique(tensors.column("name").filter(functools.reduce(pc.or_, counts))).to_pylist())
    positive = pc.and_(_is_parameter(tensors), pc.fill_null(pc.greater(tensors.column("norm"), 0), False))
    norms = pa.table({"name": tensors.column("name"), "norm": pc.if_else(positive, tensors.column("norm"), None)})
    return non_finite, norms.group_by("name", use_threads=False).aggregate([("norm", "min"), ("norm", "max")])


def _update_digest(dataset, selection, largest: int) -> tuple[set[str | None], float | None, tuple[str, ...] | None]:
    """Names of parameters with a zero update, the lowest run floor and the checkpoints at or above their floor."""
    updates = dataset.read(TableName.UPDATES, selection, sort=False,
                           columns=["run", "checkpoint", "name", "kind", "update_norm", "update_ratio"])
    parameter = _is_parameter(updates)
    zero = pc.and_(parameter, pc.fill_null(pc.equal(updates.column("update_norm"), 0), False))
    return set(pc.unique(updates.column("name").filter(zero)).to_pylist()), *_floors(updates, parameter, largest)


_PARAMETER_ROW = pc.field("kind") == _PARAMETER
_FINITE_RATIO = _PARAMETER_ROW & pc.is_finite(pc.field("update_ratio"))


def _is_parameter(table: pa.Table) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(table.column("kind"), _PARAMETER), False)


def _floors(updates: pa.Table, parameter: pa.ChunkedArray, largest: int) -> tuple[float | None, tuple[str, ...] | None]:
    """The lowest of the runs' floors (each run's ``largest``-th largest finite parameter update ratio, its smallest
    when it has fewer; a row without a run is never ranked) and the checkpoints holding a ratio at least their run's
    floor (None when one of them has no path)."""
    ratios = updates.column("update_ratio").to_numpy()  # a null is NaN
    runs = pc.dictionary_encode(updates.column("run").combine_chunks())
    codes = pc.fill_null(runs.indices, -1).to_numpy(zero_copy_only=False)
    ranked = parameter.to_numpy() & np.isfinite(ratios) & (codes >= 0)
    if not ranked.any():
        return None, ()
    floors = np.full(len(runs.dictionary), np.inf)
    for code in np.unique(codes[ranked]):
        values = ratios[ranked & (codes == code)]
        floors[code] = np.partition(values, -largest)[-largest] if len(values) > largest else values.min()
    top = ranked & (ratios >= floors[codes])
    checkpoints = set(updates.column("checkpoint").filter(pa.array(top)).to_pylist())
    return float(floors.min()), None if None in checkpoints else tuple(sorted(checkpoints))


def _read_where(dataset, table: TableName, selection, where: ds.Expression | None) -> pa.Table:
    """Every column (of the selection) of ``table``'s rows that ``where`` keeps; no rows (no file opened) without it."""
    if where is None:
        return dataset.read(table, selection.narrow(checkpoints=()))
    return dataset.read(table, selection, where=where)


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


def _last_batchnorm(dataset, selection) -> pa.Table:
    """The batchnorm rows at each run's largest step (the dead-channel check reads no other), in the whole table's
    order. Each run's last checkpoint (by the in-memory index) is read alone; when one has no batchnorm rows, the
    runs' last batchnorm steps are found by a scan of two columns instead."""
    index = dataset.read(TableName.CHECKPOINTS, selection, columns=["run", "step"])
    parts = [_at_step(dataset, selection, run, step) for run, step in _last_steps(index)]
    if all(p.num_rows for p in parts):
        return _concat(dataset, selection, parts)
    steps = dataset.read(TableName.BATCHNORM, selection, columns=["run", "step"], sort=False)
    return _concat(dataset, selection, [_at_step(dataset, selection, run, step) for run, step in _last_steps(steps)])


def _last_steps(rows: pa.Table) -> list[tuple[str, int]]:
    """``(run, largest step)`` of ``rows``, by run (a run whose steps are all missing has none)."""
    last = rows.group_by("run", use_threads=False).aggregate([("step", "max")])
    return sorted((r, s) for r, s in zip(last.column("run").to_pylist(), last.column("step_max").to_pylist())
                  if r is not None and s is not None)


def _at_step(dataset, selection, run: str, step: int) -> pa.Table:
    return dataset.read(TableName.BATCHNORM, selection.narrow(runs=(run,), steps=(step, step)))


def _concat(dataset, selection, parts: list[pa.Table]) -> pa.Table:
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else dataset.read(TableName.BATCHNORM, selection.narrow(checkpoints=()))
