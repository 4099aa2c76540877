"""Reading the stats cache back as whole pandas tables, for notebooks, small series and the export.

``load_stats`` never opens a checkpoint: it reads the per-table Parquet files that ``summarize`` wrote through
:class:`~ckptboard.core.dataset.StatsDataset` (the same reader the dashboard's views use with narrower selections).
Fragments of checkpoints deleted since are left out; an unreadable fragment or one of another format version is left
out with one :class:`~ckptboard.core.cache.CacheWarning`.
"""

from __future__ import annotations

from pathlib import Path

from ckptboard.core.dataset import StatsDataset
from ckptboard.core.schema import StatsTables

__all__ = ["load_stats"]


def load_stats(root: str | Path, cache_dir: str | Path | None = None) -> StatsTables:
    """Every table of ROOT's stats cache as DataFrames (columns of :mod:`ckptboard.core.schema`)."""
    return StatsDataset(root, cache_dir).tables()
