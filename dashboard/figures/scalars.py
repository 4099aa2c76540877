"""Scalars view: a statistic over steps for chosen tensors or modules, runs overlaid, TensorBoard's smoothing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ckptboard.core.schema import StatsTables

__all__ = ["STATISTICS", "smooth", "scalar_figure"]

# column -> label, for the statistic picker; tensor-table columns first, then update-table columns.
STATISTICS: dict[str, str] = {
    "norm": "L2 norm",
    "mean": "mean",
    "std": "standard deviation",
    "max_abs": "max |x|",
    "abs_mean": "mean |x|",
    "min": "min",
    "max": "max",
    "zeros": "zeros",
    "nans": "NaNs",
    "infs": "±Infs",
    "update_norm": "update norm ‖Δ‖",
    "update_ratio": "update ratio ‖Δ‖/‖w‖",
    "cosine": "cosine to previous",
    "dist_from_first": "distance from first ‖w−w₀‖",
    "rel_dist_from_first": "relative distance from first",
}


def smooth(values: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average; NaN/Inf values pass through and do not poison it."""
    raise NotImplementedError


def scalar_figure(
    tables: StatsTables,
    stat: str,
    *,
    tensors: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
    runs: Sequence[str] | None = None,
    smoothing: float = 0.0,
    log_y: bool = False,
    step_range: tuple[int, int] | None = None,
    max_points: int = 500,
) -> go.Figure:
    """``stat`` over step, one line per (run, tensor or module); runs overlaid."""
    raise NotImplementedError
