"""One cache fragment: the statistics of one checkpoint as a single-row Parquet file.

Each column of the row is one table of :mod:`ckptboard.core.schema` (``tensors``, ``histograms``, ``updates``,
``batchnorm``, ``events``, ``checkpoints``, ``errors``) stored as a list of structs, so that one file (written
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

from ckptboard.core import schema
from ckptboard.core.atomic import TMP_PREFIX, atomic_write

__all__ = [
    "FORMAT_VERSION",
    "TABLE_SCHEMAS",
    "TMP_PREFIX",
    "FragmentReadError",
    "write_fragment",
    "Header",
    "read_header",
    "read_fragment",
    "empty_table",
]

# Bump when a table's columns or types change: fragments of another version are recomputed with a warning.
FORMAT_VERSION = 1

_VERSION_KEY = b"ckptboard.format_version"
_KEY_KEY = b"ckptboard.key"
_INFO_KEY = b"ckptboard.info"

_str, _i64, _f64 = pa.string(), pa.int64(), pa.float64()


def _fields(columns: tuple[str, ...], types: dict[str, pa.DataType], default: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field(c, types.get(c, default)) for c in columns])


_COMMON = {"step": _i64, "prev_step": _i64}
_INTS = ("numel", "nbytes", "zeros", "nans", "posinfs", "neginfs", "infs", "channel", "size_bytes", "n_tensors",
         "n_parameters", "n_trainable", "n_frozen", "n_buffers", "parameter_bytes", "buffer_bytes")
_FLOATS = ("mean", "std", "min", "max", "abs_mean", "norm", "update_norm", "update_ratio", "cosine",
           "dist_from_first", "rel_dist_from_first", "running_mean", "running_var") + schema.PERCENTILE_COLUMNS
_TYPES: dict[str, pa.DataType] = {
    **_COMMON,
    **{c: _i64 for c in _INTS},
    **{c: _f64 for c in _FLOATS},
    "mtime": _f64,  # seconds since the epoch, as os.stat gives
    "lo": pa.list_(_f64),
    "hi": pa.list_(_f64),
    "counts": pa.list_(_i64),
}

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "checkpoints": _fields(schema.CHECKPOINT_COLUMNS, _TYPES, _str),
    "tensors": _fields(schema.TENSOR_COLUMNS, _TYPES, _str),
    "histograms": _fields(schema.HISTOGRAM_COLUMNS, _TYPES, _str),
    "updates": _fields(schema.UPDATE_COLUMNS, _TYPES, _str),
    "batchnorm": _fields(schema.BATCHNORM_COLUMNS, _TYPES, _str),
    "events": _fields(schema.EVENT_COLUMNS, _TYPES, _str),
    "errors": _fields(schema.ERROR_COLUMNS, _TYPES, _str),
}

_FRAGMENT_SCHEMA = pa.schema([pa.field(name, pa.list_(pa.struct(list(s)))) for name, s in TABLE_SCHEMAS.items()])


class FragmentReadError(Exception):
    """A fragment is unreadable or of another format version (internal: the cache turns it into a warning)."""


@dataclass(frozen=True)
class Header:
    """A fragment's footer: the ``key`` it was computed for and a small ``info`` summary (status, counts)."""

    key: dict[str, Any]
    info: dict[str, Any]


def empty_table(name: str) -> pa.Table:
    """A table with the columns of ``name`` and no rows."""
    return TABLE_SCHEMAS[name].empty_table()


def write_fragment(path: Path, header: Header, rows: dict[str, list[dict[str, Any]]]) -> None:
    """Write ``rows`` (table name -> row dicts; missing tables are empty) to ``path`` atomically."""
    columns = []
    for name, table_schema in TABLE_SCHEMAS.items():
        table = pa.Table.from_pylist(rows.get(name, []), schema=table_schema)
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


def read_fragment(path: Path, names: tuple[str, ...] | None = None) -> tuple[Header, dict[str, pa.Table]]:
    """The footer and every table (or ``names``) of one fragment, in one read."""
    names = tuple(TABLE_SCHEMAS) if names is None else names
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
    return pa.Table.from_struct_array(structs).cast(TABLE_SCHEMAS[name])
