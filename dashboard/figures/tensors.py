"""Tensors view: the parameter/buffer table of one checkpoint, filterable by regex, kind and module."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ckptboard.core.schema import StatsTables
from ckptboard.dashboard.figures._common import format_shape, select_tensors
from ckptboard.dashboard.text import format_bytes

__all__ = ["TENSOR_TABLE_COLUMNS", "TENSOR_TABLE_INPUT", "tensor_rows", "tensor_table", "tensor_table_of"]

TENSOR_TABLE_COLUMNS: tuple[str, ...] = (
    "group", "name", "module", "kind", "trainable", "source", "shape", "dtype", "numel", "nbytes", "size",
    "tied_to", "mean", "std", "min", "max", "norm", "nonfinite",
)

# The columns of the tensors table that :func:`tensor_table` reads: a dataset view narrowed to these reads 21 of 45.
TENSOR_TABLE_INPUT: tuple[str, ...] = (
    "run", "checkpoint", *(c for c in TENSOR_TABLE_COLUMNS if c not in ("size", "nonfinite")),
    "nans", "posinfs", "neginfs",
)


def tensor_table(
    tables: StatsTables,
    checkpoint: str,
    *,
    pattern: str | None = None,
    kinds: Sequence[str] | None = None,
    module: str | None = None,
) -> pd.DataFrame:
    """The tensors of ``checkpoint`` in file order: kind, trainable, source of the verdict, shape, dtype, size,
    a few statistics and ``nonfinite`` (NaN + ±Inf count); ``pattern`` is a case-insensitive regex on the name."""
    return tensor_table_of(tensor_rows(tables, checkpoint, pattern=pattern, kinds=kinds, module=module))


def tensor_rows(tables: StatsTables, checkpoint: str, **filters) -> pd.DataFrame:
    """The tensors table's rows that :func:`tensor_table` shows, unformatted (to count or cut them first)."""
    return select_tensors(tables, checkpoint=checkpoint, **filters)


def tensor_table_of(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`tensor_table`'s columns of ``rows`` (shapes and sizes formatted: the slow part, row by row)."""
    out = rows.assign(
        shape=rows["shape"].map(format_shape),
        size=rows["nbytes"].map(format_bytes),
        nonfinite=rows["nans"].fillna(0) + rows["posinfs"].fillna(0) + rows["neginfs"].fillna(0),
    )
    return out.reindex(columns=list(TENSOR_TABLE_COLUMNS)).reset_index(drop=True)
