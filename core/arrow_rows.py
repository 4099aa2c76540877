"""Row dicts -> an Arrow table of a given schema, column by column from NumPy buffers, without pandas.

``pa.Table.from_pylist`` (and every ``pa.array`` call) imports pandas on first use to check whether its input is a
pandas object: ~0.5 s of a fresh ``summarize`` process that never needs pandas. Building each column from buffers
(``pa.Array.from_buffers``) does not, and is faster for thousands of rows. The types are those of
:func:`ckptboard.core.schema.arrow_schema`: int64, float64, string, and lists of float64 or int64, whose values may
be lists or NumPy arrays. A missing key or ``None`` is null; a float NaN stays NaN (as ``from_pylist`` keeps it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["table_from_rows"]


def table_from_rows(records: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """The table of ``records`` with ``schema``'s columns (other keys ignored) and metadata."""
    columns = [_column([r.get(f.name) for r in records], f.type, f.name) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _column(values: list, kind: pa.DataType, name: str) -> pa.Array:
    try:
        if kind == pa.string():
            return _strings(values)
        if kind == pa.int64() or kind == pa.float64():
            return _numbers(values, kind)
        if pa.types.is_list(kind):
            return _lists(values, kind)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"column {name!r} ({kind}): {e}") from e
    raise TypeError(f"column {name!r}: type {kind} is not one the statistics tables use")


def _validity(values: list, scalars: bool = True) -> tuple[pa.Buffer | None, int]:
    """A validity bitmap (None when nothing is null) and the null count. ``scalars``: no value is an array (whose
    ``== None`` is an array), so ``list.count`` may look for nulls."""
    if scalars and not values.count(None):
        return None, 0
    missing = np.fromiter((v is None for v in values), dtype=np.bool_, count=len(values))
    nulls = int(missing.sum())
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(~missing, bitorder="little")), nulls


def _numbers(values: list, kind: pa.DataType) -> pa.Array:
    validity, nulls = _validity(values)
    integer = kind == pa.int64()
    if nulls:
        values = [0 if v is None else v for v in values]
    data = np.array(values) if values else np.empty(0)
    if integer and values and data.dtype.kind not in "iub":
        raise TypeError("a float in an integer column" if data.dtype.kind == "f"
                        else "a value that is not an integer in an integer column")
    data = data.astype(np.int64 if integer else np.float64)
    return pa.Array.from_buffers(kind, len(data), [validity, pa.py_buffer(data)], null_count=nulls)


def _strings(values: list) -> pa.Array:
    validity, nulls = _validity(values)
    if nulls:
        values = ["" if v is None else v for v in values]
    try:
        text = "".join(values)
    except TypeError:
        bad = next(v for v in values if not isinstance(v, str))
        raise TypeError(f"{type(bad).__name__} value {bad!r} where text is expected") from None
    data = text.encode()
    if len(data) == len(text):  # ASCII: one byte per character
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    else:
        lengths = np.fromiter((len(v.encode()) for v in values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] < 2**31:
        return pa.Array.from_buffers(pa.string(), len(values), [validity, pa.py_buffer(offsets.astype(np.int32)),
                                                                pa.py_buffer(data)], null_count=nulls)
    large = pa.Array.from_buffers(pa.large_string(), len(values), [validity, pa.py_buffer(offsets),
                                                                   pa.py_buffer(data)], null_count=nulls)
    return large.cast(pa.string())  # raises: more than 2 GiB of text in one column


def _lists(values: list, kind: pa.DataType) -> pa.Array:
    validity, nulls = _validity(values, scalars=False)
    item = kind.value_type
    dtype = np.int64 if item == pa.int64() else np.float64
    parts = [np.asarray(v if v is not None else (), dtype=dtype) for v in values]
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(np.fromiter((p.size for p in parts), dtype=np.int64, count=len(parts)), out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    children = pa.Array.from_buffers(item, len(flat), [None, pa.py_buffer(np.ascontiguousarray(flat))])
    return pa.Array.from_buffers(kind, len(parts), [validity, pa.py_buffer(offsets)], null_count=nulls,
                                 children=[children])
