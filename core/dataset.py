"""The stats cache read in place: each table as a ``pyarrow.dataset`` over its per-checkpoint Parquet files, read with
file pruning, filter and column pushdown, so that a view reads only the runs, steps, tensors and columns it draws.

Why ``pyarrow.dataset`` rather than DuckDB: pyarrow already writes the files and is imported by every reader, so
there is no second engine to install or import (DuckDB is not a dependency); the filters a view needs (runs, a step
range, a few tensor names or module prefixes, a few columns) are exactly what its expressions push down, and
one-file-per-checkpoint lets the small commit records (the ``checkpoints`` table, read once per cache state) prune
whole files by run and step before any table file is opened.

A :class:`StatsDataset` is one cache state (its ``fingerprint``); :class:`TableView` is a lazy :class:`~ckptboard.
core.schema.StatsTables`: ``view.tensors`` reads the tensors table of its :class:`Selection` when asked. A table added
to :class:`~ckptboard.core.schema.TableName` is stored and read by this code unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import groupby
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ckptboard.core.cache import StatsCache, warn_invalid
from ckptboard.core.commit_index import INDEX_NAME, read_commits
from ckptboard.core.compact import COMPACT_DIRNAME, Compacted, compacted_files, read_order
from ckptboard.core.errors import UsageError
from ckptboard.core.formats.sniff import is_checkpoint_file
from ckptboard.core.fragment import COMMIT_TABLE, table_path
from ckptboard.core.schema import COLUMNS, StatsTables, TableName, arrow_schema

__all__ = ["Selection", "StatsDataset", "TableView", "module_rollup"]

_SORT = ("run", "step", "checkpoint")  # stable: rows of one checkpoint keep the checkpoint's own (state_dict) order


@dataclass(frozen=True)
class Selection:
    """Which rows to read: every field ``None`` means all. ``steps`` is inclusive; ``modules`` are module prefixes
    (``encoder`` takes ``encoder`` and ``encoder.*``); ``kinds`` are tensor kinds (``parameter``, ``buffer``). A
    filter applies to the tables that have its column.
    ``columns``, when given, are the only columns read of every table but ``checkpoints`` (whose rows are the
    in-memory index), each table taking those it has."""

    runs: tuple[str, ...] | None = None
    steps: tuple[int, int] | None = None
    checkpoints: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None
    modules: tuple[str, ...] | None = None
    columns: tuple[str, ...] | None = None
    kinds: tuple[str, ...] | None = None

    def narrow(self, **changes: Any) -> Selection:
        """This selection with some fields replaced (sequences become tuples)."""
        return replace(self, **{k: tuple(v) if isinstance(v, (list, set)) else v for k, v in changes.items()})

    def expression(self, columns: tuple[str, ...]) -> ds.Expression | None:
        """The row filter over a table with ``columns`` (filters on absent columns are left out)."""
        parts = []
        if self.runs is not None and "run" in columns:
            parts.append(pc.field("run").isin(list(self.runs)))
        if self.steps is not None and "step" in columns:
            parts.append((pc.field("step") >= self.steps[0]) & (pc.field("step") <= self.steps[1]))
        if self.checkpoints is not None and "checkpoint" in columns:
            parts.append(pc.field("checkpoint").isin(list(self.checkpoints)))
        if self.names is not None and "name" in columns:
            parts.append(pc.field("name").isin(list(self.names)))
        if self.kinds is not None and "kind" in columns:
            parts.append(pc.field("kind").isin(list(self.kinds)))
        if self.modules is not None and "module" in columns:
            module = pc.field("module")
            parts.append(module.isin(list(self.modules)))
            for prefix in self.modules:
                parts[-1] = parts[-1] | pc.starts_with(module, prefix + ".")
        if not parts:
            return None
        expression = parts[0]
        for part in parts[1:]:
            expression = expression & part
        return expression


@dataclass(frozen=True)
class _Entry:
    """One committed fragment: its stem, its checkpoint's path, run and step (None for a failed checkpoint), the
    identity its key recorded (size, mtime_ns, ino, ctime_ns) and when its commit record was written."""

    stem: str
    relpath: str
    run: str | None
    step: int | None
    identity: tuple[int, int, int, int] | None = None
    written_ns: int = 0


class StatsDataset:
    """The tables of one cache state, read on demand; holds only the small index of committed checkpoints."""

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None):
        root = Path(root)
        if not root.is_dir():
            raise UsageError(f"{root}: not a folder; pass the folder that was summarised")
        self.root = root
        self.cache = StatsCache(root, cache_dir)
        commits = self.cache.fragments()
        self.fingerprint = self.cache.fingerprint(commits)
        index, entries, problems = _read_index(commits, self.cache.dir)
        problems += [f"{p.name}: a single-file fragment of an older format version"
                     for p in self.cache.legacy_fragments()]
        warn_invalid(problems, "were unreadable or of another format version and are left out (run summarize)")
        # Checkpoints deleted since they were summarised are left out (``summarize`` prunes their fragments).
        self._committed = entries
        # In the order rows are returned (run, step, path; unknown first), so that a scan needs no sort.
        self._entries = sorted((e for e in entries if (root / e.relpath).exists()), key=_file_order)
        kept = pa.array([e.relpath for e in self._entries], pa.string())
        self._index = index.filter(pc.is_in(index.column("checkpoint"), value_set=kept))
        self._listing: dict[TableName, set[str]] = {}
        self._compact: dict[tuple[TableName, str], Compacted] | None = None

    def read(self, table: TableName | str, selection: Selection = Selection(),
             columns: list[str] | None = None, *, sort: bool = True, where: ds.Expression | None = None) -> pa.Table:
        """``table``'s rows in ``selection`` (``columns`` only, when given) as one Arrow table, sorted by run, step,
        checkpoint (stable; with ``sort=False`` in file order, each checkpoint's rows in its own order).

        ``where``, a filter over the table's columns, is pushed down with the selection's (row groups whose
        statistics rule it out are not decoded)."""
        table = TableName(table)
        names = COLUMNS[table]
        expression = selection.expression(names)
        if where is not None:
            expression = where if expression is None else expression & where
        if columns is None and selection.columns is not None and table != COMMIT_TABLE:
            columns = [c for c in names if c in selection.columns]
        in_order = False
        if table == COMMIT_TABLE:
            result = self._index if expression is None else self._index.filter(expression)
            result = result.select(columns) if columns is not None else result
        else:
            entries = self._files(table, selection)
            result = self._scan(table, entries, expression, columns)
            # The files (and compacted files' runs of fragments) are scanned in run, step, path order, each fragment's
            # rows together: already sorted when each has a known step (a run without steps, and the errors table,
            # are sorted here).
            in_order = "step" in names and all(e.step is not None for e in entries)
        keys = [(c, "ascending", "at_start") for c in _SORT if c in result.column_names]
        if sort and keys and result.num_rows and not in_order:
            result = result.take(pc.sort_indices(result, sort_keys=keys))
        return result

    def frame(self, table: TableName | str, selection: Selection = Selection(),
              columns: list[str] | None = None) -> pd.DataFrame:
        """:meth:`read` as a DataFrame."""
        return self.read(table, selection, columns).to_pandas()

    def tensor_index(self, selection: Selection = Selection()) -> pd.DataFrame:
        """One row per distinct ``(run, group, name, module, kind)`` of the tensors table in ``selection``, with the
        largest ``numel`` seen: what pickers and filters list, computed in the scan (five columns read, not 45)."""
        keys = ["run", "group", "name", "module", "kind"]
        rows = self.read(TableName.TENSORS, selection, columns=[*keys, "numel"])
        index = rows.group_by(keys, use_threads=False).aggregate([("numel", "max")])  # first-seen order
        return index.select([*keys, "numel_max"]).rename_columns([*keys, "numel"]).to_pandas()

    def distinct(self, table: TableName | str, column: str, selection: Selection = Selection()) -> list:
        """The distinct values of one ``column`` of ``table`` in ``selection`` (nulls left out), sorted: one column
        read in file order, no other (the sidebar's module depth and the module picker need only this)."""
        values = pc.unique(self.read(table, selection, columns=[column], sort=False).column(column).drop_null())
        return sorted(values.to_pylist())

    def module_rollup(self, selection: Selection = Selection(), depth: int | None = None) -> pd.DataFrame:
        """:func:`module_rollup` of the tensors of ``selection``, reading only the nine columns it needs."""
        return module_rollup(self.read(TableName.TENSORS, selection, columns=list(_ROLLUP_INPUT), sort=False), depth)

    def parameter_elements(self, selection: Selection = Selection()) -> pd.Series:
        """Parameter elements per checkpoint (tensors tied to another counted once), summed in the scan: four
        columns read, parameters only (the filter pushed down)."""
        rows = self.read(TableName.TENSORS, selection.narrow(kinds=("parameter",)),
                         columns=["checkpoint", "tied_to", "numel"], sort=False)
        rows = rows.filter(pc.invert(pc.fill_null(pc.not_equal(rows.column("tied_to"), ""), False)))
        sums = rows.group_by("checkpoint", use_threads=False).aggregate([("numel", "sum")])
        return pd.Series(sums.column("numel_sum").to_numpy(), index=sums.column("checkpoint").to_pylist(),
                         name="numel", dtype="int64")

    def tables(self, selection: Selection = Selection()) -> StatsTables:
        """Every table of ``selection`` read whole (for notebooks and small series; views read a :class:`TableView`)."""
        return StatsTables(**{str(name): self.frame(name, selection) for name in TableName})

    def view(self, selection: Selection = Selection(),
             reader: Callable[[StatsDataset, TableName, Selection], pd.DataFrame] | None = None) -> TableView:
        """A lazy view of ``selection``: each table read on first access (through ``reader``, to share a cache)."""
        return TableView(self, selection, reader)

    def unseen_change(self) -> str | None:
        """Why ROOT may hold checkpoints this cache does not (a path and what changed), or None: by ``stat`` alone,
        without importing torch, so that a new session can skip the full look (``summarize.plan``) when nothing did.

        Conservative: a cached checkpoint gone or with another identity than its key (a folder: any file or
        subfolder changed after its fragment was written); any other file changed after the cache folder was last
        touched (``plan`` touches it before listing ROOT); a checkpoint file the cache does not hold (a summarize
        cut short, or a copy such as Lightning's ``last.ckpt``, which only the full look names as an alias).
        Missed: a checkpoint *folder* that an interrupted summarize listed and never read (Refresh reads it).
        """
        known = {e.relpath: e for e in self._committed}
        for entry in known.values():
            reason = _changed(self.root / entry.relpath, entry)
            if reason:
                return f"{entry.relpath}: {reason}"
        try:
            listed_ns = self.cache.dir.stat().st_mtime_ns
        except OSError:
            return f"{self.cache.dir}: no cache folder"
        cache_dir = os.path.abspath(self.cache.dir)
        for folder, dirs, files in os.walk(self.root):
            rel = Path(folder).relative_to(self.root)
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"
                       and (rel / d).as_posix() not in known and os.path.join(os.path.abspath(folder), d) != cache_dir]
            for name in files:
                relpath = (rel / name).as_posix()
                if name.startswith(".") or relpath in known:
                    continue
                path = Path(folder) / name
                try:
                    ctime_ns = path.stat().st_ctime_ns
                except OSError:
                    continue  # removed meanwhile
                if ctime_ns > listed_ns:
                    return f"{relpath}: written since ROOT was last listed"
                if is_checkpoint_file(path):
                    return f"{relpath}: a checkpoint the cache does not hold"
        return None

    def _scan(self, table: TableName, entries: list[_Entry], expression, columns: list[str] | None) -> pa.Table:
        """The filtered rows of ``entries``' ``table`` files: runs of consecutive entries that a compacted file
        holds at their committed version are read from it (one file), the others from their own files."""
        schema = arrow_schema(table)
        compacted = self._compacted()
        parts = []
        for source, group in groupby(entries, key=lambda e: _compacted_source(compacted.get((table, e.run)), e)):
            group = list(group)
            rows = None if source is None else _scan_compacted(source, group, schema, expression, columns)
            if rows is None:  # not compacted, or the compacted file unreadable: the fragments' own files (those
                listed = self._listing[table]  # without one have no rows of this table)
                rows = _scan([table_path(self.cache.dir, table, e.stem) for e in group if e.stem in listed], schema,
                             expression, columns)
            parts.append(rows)
        if len(parts) == 1:
            return parts[0]
        return pa.concat_tables(parts) if parts else _scan([], schema, None, columns)

    def _compacted(self) -> dict[tuple[TableName, str], Compacted]:
        """The compacted files of this cache (footers read once per dataset)."""
        if self._compact is None:
            self._compact = compacted_files(self.cache.dir)
        return self._compact

    def _files(self, table: TableName, selection: Selection) -> list[_Entry]:
        """The committed fragments that have a ``table`` file, or whose rows a compacted file holds, and may hold
        rows of ``selection``."""
        if table not in self._listing:
            folder = self.cache.dir / str(table)
            self._listing[table] = {p.stem for p in folder.glob("*.parquet")} if folder.is_dir() else set()
        listed = self._listing[table]
        compacted = self._compacted()
        return [e for e in self._entries if _may_hold(e, selection)
                and (e.stem in listed or _compacted_source(compacted.get((table, e.run)), e) is not None)]


def _file_order(entry: _Entry) -> tuple:
    """``entry``'s place in :meth:`StatsDataset.read`'s order: run, step, path, an unknown run or step first."""
    return (entry.run is not None, entry.run or "", *read_order(entry.step, entry.relpath))  # compacted files' too


def _changed(path: Path, entry: _Entry) -> str | None:
    """What changed in the cached checkpoint at ``path`` since its fragment was written, or None (``stat`` only)."""
    try:
        info = path.stat()
    except OSError:
        return "deleted"
    if not path.is_dir():
        now = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns)
        return None if entry.identity is None or now == entry.identity else "changed"
    for folder, _dirs, files in os.walk(path):
        for name in [".", *files]:
            try:
                if (Path(folder) / name).stat().st_ctime_ns > entry.written_ns:
                    return "changed"
            except OSError:
                return "changed"
    return None


def _may_hold(entry: _Entry, selection: Selection) -> bool:
    """Whether a fragment can hold rows of ``selection``, judged by its index entry (a failed checkpoint's step is
    unknown, so only its run and path prune it)."""
    if selection.runs is not None and entry.run is not None and entry.run not in selection.runs:
        return False
    if selection.checkpoints is not None and entry.relpath not in selection.checkpoints:
        return False
    if selection.steps is not None and entry.step is not None:
        return selection.steps[0] <= entry.step <= selection.steps[1]
    return True


class TableView:
    """A :class:`~ckptboard.core.schema.StatsTables` whose tables are read on first access, restricted to a
    :class:`Selection`: ``view.tensors``, ``view.histograms``, ... (one attribute per :class:`TableName`)."""

    def __init__(self, dataset: StatsDataset, selection: Selection = Selection(),
                 reader: Callable[[StatsDataset, TableName, Selection], pd.DataFrame] | None = None):
        self.dataset = dataset
        self.selection = selection
        self._reader = reader or (lambda d, t, s: d.frame(t, s))
        self._frames: dict[TableName, pd.DataFrame] = {}

    def __getattr__(self, name: str) -> pd.DataFrame:
        try:
            table = TableName(name)
        except ValueError:
            raise AttributeError(name) from None
        if table not in self._frames:
            self._frames[table] = self._reader(self.dataset, table, self.selection)
        return self._frames[table]

    def narrow(self, **changes: Any) -> TableView:
        """A view of a narrower selection (see :meth:`Selection.narrow`) over the same dataset and reader."""
        return TableView(self.dataset, self.selection.narrow(**changes), self._reader)

    def __repr__(self) -> str:
        return f"TableView({self.dataset.fingerprint[:12]}, {self.selection})"


def _read_index(commits: list[Path], cache_dir: Path) -> tuple[pa.Table, list[_Entry], list[str]]:
    """The checkpoints table of every readable commit record, its entries, and the unreadable ones as problems."""
    records, problems = read_commits(commits, Path(cache_dir) / COMPACT_DIRNAME / INDEX_NAME)
    entries = [_Entry(r.stem, r.relpath, r.run, r.step, r.identity, r.written_ns) for r in records]
    parts = [r.rows for r in records if r.rows.num_rows]
    schema = arrow_schema(COMMIT_TABLE)
    index = pa.concat_tables(parts).replace_schema_metadata(None) if parts else schema.empty_table()
    return index, entries, problems


def _compacted_source(compacted: Compacted | None, entry: _Entry) -> Compacted | None:
    """``compacted`` when it holds ``entry``'s rows at the version committed, else None."""
    if compacted is not None and compacted.versions.get(entry.stem) == entry.written_ns:
        return compacted
    return None


def _scan_compacted(compacted: Compacted, entries: list[_Entry], schema: pa.Schema, expression,
                    columns: list[str] | None) -> pa.Table | None:
    """The filtered rows of ``entries`` in a compacted file (None when it cannot be read: the caller falls back)."""
    if len(entries) < len(compacted.versions):  # it holds other checkpoints too: those of the selection only
        only = pc.field("checkpoint").isin([e.relpath for e in entries])
        expression = only if expression is None else expression & only
    try:
        return ds.dataset(str(compacted.path), schema=schema, format="parquet").to_table(columns=columns,
                                                                                      filter=expression)
    except (OSError, pa.ArrowException):
        return None


def _scan(paths: list[Path], schema: pa.Schema, expression, columns: list[str] | None) -> pa.Table:
    """The filtered rows of ``paths``; when one file is damaged, the others, with one warning naming it."""
    if not paths:
        empty = schema.empty_table()
        return empty.select(columns) if columns is not None else empty
    try:
        dataset = ds.dataset([str(p) for p in paths], schema=schema, format="parquet")
        return dataset.to_table(columns=columns, filter=expression)
    except (OSError, pa.ArrowException):
        pass
    parts, problems = [], []
    for path in paths:
        try:
            parts.append(ds.dataset(str(path), schema=schema, format="parquet").to_table(columns=columns,
                                                                                         filter=expression))
        except (OSError, pa.ArrowException) as e:
            problems.append(f"{path.parent.name}/{path.name}: unreadable ({type(e).__name__})")
    warn_invalid(problems, "were unreadable and are left out (run summarize)")
    return pa.concat_tables(parts) if parts else _scan([], schema, None, columns)

_ROLLUP_INPUT = ("checkpoint", "group", "name", "kind", "trainable", "dtype", "numel", "nbytes", "tied_to")


def module_rollup(rows: pa.Table | pd.DataFrame, depth: int | None = None) -> pd.DataFrame:
    """Rows of the tensors table summed per ``checkpoint``, ``group``, ``module`` (the tensor's module, cut to its
    first ``depth`` names; ``""`` is the root), ``kind``, ``trainable``, ``dtype`` and ``counted``: columns
    ``tensors``, ``numel``, ``nbytes``, in the order of their first tensor. Computed in Arrow (``group_by``): a size
    tree to ``depth`` is built from these few rows, not from every tensor's.

    ``counted`` is False for a tensor whose data an earlier tensor of its checkpoint and group holds (the first
    of the tensors sharing a ``tied_to`` key is counted), the rule of :mod:`ckptboard.core.size`.
    """
    if isinstance(rows, pd.DataFrame):
        rows = pa.Table.from_pandas(rows[list(_ROLLUP_INPUT)], preserve_index=False)
    name = rows.column("name")
    tied = pc.fill_null(rows.column("tied_to"), "")
    share = pc.if_else(pc.equal(tied, ""), name, tied)  # tensors with equal ``share`` hold the same data
    rows = rows.append_column("_share", share).append_column("_i", pa.array(range(rows.num_rows), pa.int64()))
    first = rows.group_by(["checkpoint", "group", "_share"], use_threads=False).aggregate([("_i", "min")])
    counted = pc.is_in(rows.column("_i"), value_set=first.column("_i_min"))
    module = pc.if_else(pc.match_substring(name, "."), pc.replace_substring_regex(name, r"\.[^.]*$", ""), "")
    if depth == 0:
        module = pa.repeat("", rows.num_rows)
    elif depth is not None:
        keep = r"^((?:[^.]*\.){%d}[^.]*)\..*$" % (depth - 1)  # the first ``depth`` names
        module = pc.replace_substring_regex(module, keep, r"\1")
    rows = rows.select(["checkpoint", "group", "kind", "trainable", "dtype", "numel", "nbytes", "_i"])
    rows = rows.append_column("module", module).append_column("counted", counted)
    group_keys = ["checkpoint", "group", "module", "kind", "trainable", "dtype", "counted"]
    out = rows.group_by(group_keys, use_threads=False).aggregate(
        [("numel", "count"), ("numel", "sum"), ("nbytes", "sum"), ("_i", "min")])
    out = out.take(pc.sort_indices(out, sort_keys=[("_i_min", "ascending")]))  # in the order of their tensors
    return out.select([*group_keys, "numel_count", "numel_sum", "nbytes_sum"]).rename_columns(
        [*group_keys, "tensors", "numel", "nbytes"]).to_pandas()
