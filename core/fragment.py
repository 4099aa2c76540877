"""One cache fragment: the statistics of one checkpoint as a single-row Parquet file.

Each column of the row is one table of :mod:`ckptboard.core.schema` (one per :class:`~ckptboard.core.schema.TableName`)
stored as a list of structs, so that one file (written
atomically) holds everything one checkpoint contributes. The file's schema metadata holds the format version and
the key (the checkpoint's identity) under ``ckptboard.*``; reading the key touches only the footer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ckptboard.core.atomic import TMP_PREFIX, atomic_write
from ckptboard.core.schema import FORMAT_VERSION, TableName, arrow_schema

__all__ = [
    "FORMAT_VERSION",
    "TMP_PREFIX",
    "FragmentReadError",
    "write_fragment",
    "Header",
    "read_header",
    "read_fragment",
    "empty_table",
]

_VERSION_KEY = b"ckptboard.format_version"
_KEY_KEY = b"ckptboard.key"
_INFO_KEY = b"ckptboard.info"

_FRAGMENT_SCHEMA = pa.schema([pa.field(name, pa.list_(pa.struct(list(arrow_schema(name))))) for name in TableName])


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


def write_fragment(path: Path, header: Header, rows: dict[TableName, list[dict[str, Any]]]) -> None:
    """Write ``rows`` (table name -> row dicts; missing tables are empty) to ``path`` atomically."""
    columns = []
    for name in TableName:
        table = pa.Table.from_pylist(rows.get(name, []), schema=arrow_schema(name))
        structs = table.to_struct_array().combine_chunks()
        columns.append(pa.ListArray.from_arrays(pa.array([0, len(structs)], pa.int32()), structs))
    metadata = {
        _VERSION_KEY: str(FORMAT_VERSION).encode(),
        _KEY_KEY: json.dumps(header.key, sort_keys=True).encode(),
        _INFO_KEY: json.dumps(header.info, sort_keys=True).encode(),
    }
    table = pa.Table.from_arrays(columns, schema=_FRAGMENT_SCHEMA.with_metadata(metadata))
    # A crash leaves at most a ``.tmp-*`` file, which nothing reads (and summarize prunes).
    atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))


def read_header(path: Path) -> Header:
    """The fragment's footer only; :class:`FragmentReadError` if unreadable or of another format version."""
    try:
        metadata = pq.read_metadata(path).metadata  # the footer's key-value pairs, no Arrow schema built
    except (OSError, pa.ArrowException) as e:
        raise FragmentReadError(f"unreadable ({type(e).__name__}: {e})") from e
    return _header(metadata)


def read_fragment(path: Path, names: tuple[TableName, ...] | None = None) -> tuple[Header, dict[TableName, pa.Table]]:
    """The footer and every table (or ``names``) of one fragment, in one read."""
    names = tuple(TableName) if names is None else tuple(TableName(n) for n in names)
    try:
        fragment = pq.read_table(path, columns=list(names))
    except (OSError, pa.ArrowException) as e:
        raise FragmentReadError(f"unreadable ({type(e).__name__}: {e})") from e
    header = _header(fragment.schema.metadata)
    try:
        return header, {name: _unnest(fragment.column(name), name) for name in names}
    except (pa.ArrowException, KeyError) as e:
        raise FragmentReadError(f"tables do not match format version {FORMAT_VERSION} ({e})") from e


def _header(metadata: dict[bytes, bytes] | None) -> Header:
    metadata = metadata or {}
    version = metadata.get(_VERSION_KEY, b"none").decode(errors="replace")
    if version != str(FORMAT_VERSION):
        raise FragmentReadError(f"format version {version}, this ckptboard reads {FORMAT_VERSION}")
    try:
        return Header(json.loads(metadata[_KEY_KEY]), json.loads(metadata.get(_INFO_KEY, b"{}")))
    except (KeyError, ValueError) as e:
        raise FragmentReadError("no readable key in its metadata") from e


def _unnest(column: pa.ChunkedArray, name: str) -> pa.Table:
    structs = pc.list_flatten(column)
    if len(structs) == 0:
        return empty_table(name)
    if isinstance(structs, pa.ChunkedArray):
        structs = structs.combine_chunks()
    return pa.Table.from_struct_array(structs).cast(arrow_schema(name))
