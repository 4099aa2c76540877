"""Tensors view: the parameter/buffer table of one checkpoint, filterable by regex, kind and module."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ckptboard.core.schema import StatsTables

__all__ = ["tensor_table"]


def tensor_table(
    tables: StatsTables,
    checkpoint: str,
    *,
    pattern: str | None = None,
    kinds: Sequence[str] | None = None,
    module: str | None = None,
) -> pd.DataFrame:
    """The tensors of ``checkpoint`` (kind, trainable, source, shape, dtype, size, a few statistics)."""
    raise NotImplementedError
