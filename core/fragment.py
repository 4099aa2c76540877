"""One cache fragment: the statistics of one checkpoint as flat Parquet files, one per table.

Format version 3. Each table of :mod:`ckptboard.core.schema` (one per :class:`~ckptboard.core.schema.TableName`)
lives in its own folder of the cache, ``CACHE/<table>/<stem>.parquet``, one file per checkpoint with the table's own
columns, so that a reader can scan a table across checkpoints with column and filter pushdown (``pyarrow.dataset``)
instead of unnesting whole fragments. A table with no rows has no file. The ``checkpoints`` file is the commit record:
it is written last (and removed first on a rewrite), always exists, and its footer holds the format version and the
key (the checkpoint's identity) under ``ckptboard.*``; reading the key touches only that footer. A reader takes a
table file only when its stem has a commit record, so a writer that died half way leaves nothing half-read.

Histogram rows are sorted by ``(group, name)`` and written in small row groups: a read of one tensor's histograms
skips the other row groups by their statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ckptboard.core.arrow_rows import table_from_rows
from ckptboard.core.atomic import TMP_PREFIX, atomic_write
from ckptboard.core.schema import FORMAT_VERSION, TableName, arrow_schema

__all__ = [
    "FORMAT_VERSION",
    "TMP_PREFIX",
    "COMMIT_TABLE",
    "FragmentReadError",
    "Header",
    "table_path",
    "write_fragment",
    "remove_fragment",
    "read_header",
    "read_fragment",
    "empty_table",
]

COMMIT_TABLE = TableName.CHECKPOINTS  # its file is written last and carries the key
_SUFFIX = ".parquet"
_VERSION_KEY = b"ckptboard.format_version"
_KEY_KEY = b"ckptboard.key"
_INFO_KEY = b"ckptboard.info"
_HISTOGRAM_ROW_GROUP = 128  # rows: one tensor's read decodes ~1/16 of a 2,000-tensor checkpoint's histograms


class FragmentReadError(Exception):
    """A fragment is unreadable or of another format version (internal: the cache turns it into a warning)."""


@dataclass(frozen=True)
class Header:
    """A fragment's footer: the ``key`` it was computed for and a small ``info`` summary (status, counts)."""

    key: dict[str, Any]
    info: dict[str, Any]


def empty_table(name: TableName | str) -> pa.Table:
    """A table with the columns of ``name`` and no rows."""
    return arrow_schema(name).empty_table()


def table_path(cache_dir: Path, table: TableName | str, stem: str) -> Path:
    """The file of ``table``'s rows of the checkpoint whose fragment is named ``stem``."""
    return Path(cache_dir) / str(TableName(table)) / f"{stem}{_SUFFIX}"


def write_fragment(cache_dir: Path, stem: str, header: Header, rows: dict[TableName, list[dict[str, Any]]]) -> Path:
    """Write ``rows`` (table name -> row dicts; missing tables are empty) as one file per table, each atomically,
    the commit record last; return the commit record's path."""
    commit = table_path(cache_dir, COMMIT_TABLE, stem)
    commit.unlink(missing_ok=True)  # until the new record lands, readers skip this checkpoint's old files
    metadata = {
        _VERSION_KEY: str(FORMAT_VERSION).encode(),
        _KEY_KEY: json.dumps(header.key, sort_keys=True).encode(),
        _INFO_KEY: json.dumps(header.info, sort_keys=True).encode(),
    }
    for name in [n for n in TableName if n != COMMIT_TABLE] + [COMMIT_TABLE]:
        path = table_path(cache_dir, name, stem)
        records = rows.get(name, [])
        if not records and name != COMMIT_TABLE:
            path.unlink(missing_ok=True)
            continue
        options = {}
        if name == TableName.HISTOGRAMS:
            # sorted here, not by Table.sort_by: that imports pyarrow.compute (~0.1 s of a fresh process); Python's
            # order of str is code point order, Arrow's of UTF-8 bytes the same
            records = sorted(records, key=_by_tensor)
            options["row_group_size"] = _HISTOGRAM_ROW_GROUP
        table = table_from_rows(records, arrow_schema(name).with_metadata(metadata))
        path.parent.mkdir(exist_ok=True)
        # A crash leaves at most a ``.tmp-*`` file, which nothing reads (and summarize prunes).
        atomic_write(path, lambda f, t=table: pq.write_table(t, f, compression="zstd", **options))
    return commit


def _by_tensor(row: dict[str, Any]) -> tuple:
    """Sort key of a histogram row: ``(group, name)``, a missing value last (as Arrow places nulls)."""
    group, name = row.get("group"), row.get("name")
    return group is None, group or "", name is None, name or ""


def remove_fragment(cache_dir: Path, stem: str) -> None:
    """Remove every file of the fragment ``stem``, the commit record first."""
    for name in [COMMIT_TABLE] + [n for n in TableName if n != COMMIT_TABLE]:
        table_path(cache_dir, name, stem).unlink(missing_ok=True)


def read_header(path: Path) -> Header:
    """The commit record's footer only; :class:`FragmentReadError` if unreadable or of another format version."""
    try:
        metadata = pq.read_metadata(path).metadata  # the footer's key-value pairs, no Arrow schema built
    except (OSError, pa.ArrowException) as e:
        raise FragmentReadError(f"unreadable ({type(e).__name__}: {e})") from e
    return _header(metadata)


def read_fragment(cache_dir: Path, stem: str,
                  names: tuple[TableName, ...] | None = None) -> tuple[Header, dict[TableName, pa.Table]]:
    """The header and every table (or ``names``) of one fragment."""
    header = read_header(table_path(cache_dir, COMMIT_TABLE, stem))
    names = tuple(TableName) if names is None else tuple(TableName(n) for n in names)
    tables = {}
    for name in names:
        path = table_path(cache_dir, name, stem)
        try:
            tables[name] = pq.read_table(path, schema=arrow_schema(name)) if path.exists() else empty_table(name)
        except (OSError, pa.ArrowException) as e:
            raise FragmentReadError(f"{name} unreadable ({type(e).__name__}: {e})") from e
    return header, tables


def _header(metadata: dict[bytes, bytes] | None) -> Header:
    metadata = metadata or {}
    version = metadata.get(_VERSION_KEY, b"none").decode(errors="replace")
    if version != str(FORMAT_VERSION):
        raise FragmentReadError(f"format version {version}, this ckptboard reads {FORMAT_VERSION}")
    try:
        return Header(json.loads(metadata[_KEY_KEY]), json.loads(metadata.get(_INFO_KEY, b"{}")))
    except (KeyError, ValueError) as e:
        raise FragmentReadError("no readable key in its metadata") from e
