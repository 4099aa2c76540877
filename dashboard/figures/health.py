"""Health view: non-finite values, unchanged parameters, dead BN channels, exploding norms, largest update ratios."""

from __future__ import annotations

import pandas as pd

from ckptboard.core.schema import StatsTables

__all__ = ["HEALTH_COLUMNS", "health_table"]

HEALTH_COLUMNS: tuple[str, ...] = (
    "check", "severity", "run", "checkpoint", "step", "group", "name", "value", "detail",
)


def health_table(tables: StatsTables, *, dead_var: float = 1e-8, explode_factor: float = 10.0) -> pd.DataFrame:
    """One row per finding, most severe first."""
    raise NotImplementedError
