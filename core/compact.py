"""Compacted tables: a run's per-checkpoint table files copied into one Parquet file per table, so that a scan of a
long run opens one file instead of hundreds.

A scan pays a fixed cost per file (~0.5–0.7 ms to open it and parse its footer, before any row): at 500 checkpoints
that is most of a narrow scan's time. ``summarize`` therefore copies a run's fragments, once enough of them are
not yet covered, into ``CACHE/compact/<table>/<run>-<token>.parquet``, rows in the order a read returns them (step,
then path). The fragments stay the source of truth and are kept: a compacted file is a derived copy that a reader
uses only for the fragments it records at the very version committed (the commit record's ``mtime_ns``), and falls
back from when it is unreadable. So a checkpoint summarised again after compaction is read from its own files, a
deleted one is filtered out, and removing the ``compact`` folder changes nothing but speed.

When: a run is compacted when its fragments not covered number at least ``max(COMPACT_MIN, covered)``, so a run
that grows by a few checkpoints at a time is rewritten at doubling sizes (each fragment copied about twice in all).
It is written one fragment at a time (bounded memory), atomically, under a new name; the file it replaces is
removed after.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ckptboard.core.atomic import TMP_PREFIX, atomic_write
from ckptboard.core.cache import StatsCache, commit_files
from ckptboard.core.commit_index import INDEX_NAME, mtime_ns, read_commits, write_commit_index
from ckptboard.core.fragment import COMMIT_TABLE, table_path
from ckptboard.core.schema import FORMAT_VERSION, TableName, arrow_schema

__all__ = ["COMPACT_DIRNAME", "COMPACT_MIN", "COMPACTED_TABLES", "Compacted", "FragmentVersion", "compact_cache",
           "compact_if_due", "compact_run", "compacted_files", "due", "read_order"]

COMPACT_DIRNAME = "compact"
COMPACT_MIN = 32  # fragments: below this a run's scan is cheap enough file by file
# Every table with a file per checkpoint but the commit records (the dataset's in-memory index), errors (rare) and
# histograms: a read of one tensor's histograms costs its row groups' decoding (128 rows of 513-bin lists per
# checkpoint), not the files' opening, so one file would not make it faster.
COMPACTED_TABLES = tuple(t for t in TableName if t not in (COMMIT_TABLE, TableName.ERRORS, TableName.HISTOGRAMS))
_KEY = b"ckptboard.compact"
_ROW_GROUP = 65_536  # rows per row group of most tables: a few MB of a 40-column table


@dataclass(frozen=True)
class FragmentVersion:
    """One committed fragment: its ``stem``, its checkpoint's path, and its commit record's ``written_ns``."""

    stem: str
    relpath: str
    written_ns: int


@dataclass(frozen=True)
class Compacted:
    """A compacted file of ``table``: the run it copies and, per fragment stem, the ``written_ns`` it copied."""

    path: Path
    table: TableName
    run: str
    versions: dict[str, int]


def compacted_files(cache_dir: Path) -> dict[tuple[TableName, str], Compacted]:
    """The newest readable compacted file of each ``(table, run)`` (footers only; unreadable ones are skipped)."""
    found: dict[tuple[TableName, str], tuple[int, Compacted]] = {}
    for table in COMPACTED_TABLES:
        folder = Path(cache_dir) / COMPACT_DIRNAME / str(table)
        if not folder.is_dir():
            continue
        for path in folder.glob("*.parquet"):
            if path.name.startswith(TMP_PREFIX):
                continue
            try:
                record = json.loads(pq.read_metadata(path).metadata[_KEY])
                if record["format_version"] != FORMAT_VERSION or record["table"] != str(table):
                    continue
                entry = Compacted(path, table, str(record["run"]), {str(k): int(v) for k, v in
                                                                     record["versions"].items()})
                made = int(record["made_ns"])
            except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
                continue
            key = (table, entry.run)
            if key not in found or made > found[key][0]:
                found[key] = (made, entry)
    return {key: entry for key, (_, entry) in found.items()}


def due(fragments: list[FragmentVersion], compacted: Compacted | None, minimum: int = COMPACT_MIN) -> bool:
    """Whether a run of ``fragments`` is worth compacting again: those ``compacted`` does not cover at their
    version number at least ``max(minimum, covered)``."""
    versions = compacted.versions if compacted is not None else {}
    covered = sum(versions.get(f.stem) == f.written_ns for f in fragments)
    return len(fragments) - covered >= max(minimum, covered)


def compact_run(cache_dir: Path, run: str, fragments: list[FragmentVersion],
                replaced: Iterable[Compacted] = ()) -> list[Compacted]:
    """Copy each table of ``fragments`` (one run, in read order) into one compacted file per table; remove the
    ``replaced`` files after. A fragment rewritten or removed while it is copied is left out (read from its own files
    then). Returns what was written."""
    made_ns = time.time_ns()
    token = f"{made_ns:x}"
    written = []
    for table in COMPACTED_TABLES:
        folder = Path(cache_dir) / COMPACT_DIRNAME / str(table)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{StatsCache.stem(run)}-{token}.parquet"  # a readable, distinct name
        versions = _copy(Path(cache_dir), table, fragments, path, run, made_ns)
        if versions is not None:
            written.append(Compacted(path, table, run, versions))
    for old in replaced:
        old.path.unlink(missing_ok=True)
    return written


class _Moved(Exception):
    """A fragment was summarised again or removed while it was copied."""


def _copy(cache_dir: Path, table: TableName, fragments: list[FragmentVersion], path: Path, run: str,
          made_ns: int) -> dict[str, int] | None:
    """Write ``table``'s rows of ``fragments`` into ``path``, one fragment read at a time; the versions copied, or
    None when a fragment moved meanwhile (the run's files are then read one by one, until the next compaction)."""
    schema = arrow_schema(table)
    versions = {f.stem: f.written_ns for f in fragments}
    record = {"format_version": FORMAT_VERSION, "table": str(table), "run": run, "made_ns": made_ns,
              "versions": versions}

    def write(f) -> None:
        with pq.ParquetWriter(f, schema.with_metadata({_KEY: json.dumps(record).encode()}),
                              compression="zstd") as writer:
            pending: list[pa.Table] = []
            count = 0
            for fragment in fragments:
                rows = _read_at_version(cache_dir, table, fragment, schema)
                if rows is None:
                    raise _Moved(fragment.relpath)
                pending.append(rows)
                count += rows.num_rows
                if count >= _ROW_GROUP:
                    writer.write_table(pa.concat_tables(pending), row_group_size=_ROW_GROUP)
                    pending, count = [], 0
            if count:
                writer.write_table(pa.concat_tables(pending), row_group_size=_ROW_GROUP)

    try:
        atomic_write(path, write)
    except _Moved:
        return None
    return versions


def _read_at_version(cache_dir: Path, table: TableName, fragment: FragmentVersion,
                     schema: pa.Schema) -> pa.Table | None:
    """``fragment``'s rows of ``table`` (none: an empty table), or None when its commit record is no longer at the
    version listed (summarised again, or removed) or its file is unreadable."""
    commit = table_path(cache_dir, COMMIT_TABLE, fragment.stem)
    if mtime_ns(commit) != fragment.written_ns:
        return None
    path = table_path(cache_dir, table, fragment.stem)
    try:
        rows = pq.read_table(path, schema=schema) if path.exists() else schema.empty_table()
    except (OSError, pa.ArrowException):
        return None
    if mtime_ns(commit) != fragment.written_ns:  # rewritten while it was read: these rows may be of either version
        return None
    return rows.replace_schema_metadata(None)


def read_order(step: int | None, relpath: str) -> tuple:
    """A fragment's place among its run's in a read: by step (an unknown step first), then path."""
    return step is not None, step or 0, relpath


_CHECKED = "checked.json"  # the number of commit records when the runs were last looked at


def compact_if_due(cache_dir: Path, changed: bool, minimum: int = COMPACT_MIN,
                   on_run: Callable[[str, int], None] | None = None) -> list[str]:
    """:func:`compact_cache` when fragments were written (``changed``) or their number differs from the last look
    (a cache summarised before compaction existed, or by another process): an unchanged cache costs one listing.
    ``on_run(run, fragments)`` before each run is compacted (seconds at hundreds of checkpoints)."""
    commits = commit_files(cache_dir)
    marker = Path(cache_dir) / COMPACT_DIRNAME / _CHECKED
    if not changed:
        try:
            if json.loads(marker.read_text()).get("commits") == len(commits):
                return []
        except (OSError, ValueError, AttributeError):
            pass
    done = compact_cache(cache_dir, minimum, on_run, commits)
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, lambda f: f.write(json.dumps({"commits": len(commits)}).encode()))
    return done


def compact_cache(cache_dir: Path, minimum: int = COMPACT_MIN, on_run: Callable[[str, int], None] | None = None,
                  commits: list[Path] | None = None) -> list[str]:
    """Compact every run of the cache at ``cache_dir`` that is :func:`due`; the runs compacted. Reads the commit
    records only (``commits``, else those listed now) and copies them into the commit index
    (``core.commit_index``): call it after fragments changed."""
    by_run: dict[str, list[tuple[tuple, FragmentVersion]]] = {}
    commits = commit_files(cache_dir) if commits is None else commits
    index = Path(cache_dir) / COMPACT_DIRNAME / INDEX_NAME
    records, _ = read_commits(commits, index)  # an unreadable one: the dataset leaves it out, and so does this
    for r in records:
        if r.run is not None:
            by_run.setdefault(str(r.run), []).append((read_order(r.step, r.relpath),
                                                      FragmentVersion(r.stem, r.relpath, r.written_ns)))
    write_commit_index(index, records)
    existing = compacted_files(Path(cache_dir))
    for (_, run), gone in existing.items():
        if run not in by_run:  # every checkpoint of the run deleted (and pruned)
            gone.path.unlink(missing_ok=True)
    done = []
    for run, listed in sorted(by_run.items()):
        fragments = [f for _, f in sorted(listed, key=lambda item: item[0])]
        if not due(fragments, existing.get((TableName.TENSORS, run)), minimum):
            continue
        replaced = [c for (_, r), c in existing.items() if r == run]
        if on_run is not None:
            on_run(run, len(fragments))
        compact_run(Path(cache_dir), run, fragments, replaced)
        done.append(run)
    return done
