"""Spectral health over training: alpha, stable rank or sigma_max per layer against step, runs overlaid.

The alpha figure shades WeightWatcher's published interpretation bands (below 2 "over-trained", 2-6
"well-trained", above 6 "under-trained"), labelled as WeightWatcher's, not ckptboard's verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ckptboard.core.errors import UsageError
from ckptboard.core.readings import OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE
from ckptboard.dashboard.figures._common import decimate_steps, empty_figure, series_color, tensor_label

__all__ = ["SPECTRAL_METRICS", "spectral_figure", "spectral_layers"]

SPECTRAL_METRICS: dict[str, str] = {
    "alpha": "ESD power-law α (--spectral full)",
    "stable_rank": "stable rank ‖W‖²_F / σ²_max",
    "sigma_max": "top singular value σ_max",
}
_BANDS = (
    (0.0, OVER_TRAINED_BELOW, "over-trained", "rgba(214, 39, 40, 0.10)"),
    (OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE, "well-trained", "rgba(44, 160, 44, 0.10)"),
    (UNDER_TRAINED_ABOVE, None, "under-trained", "rgba(255, 127, 14, 0.10)"),
)


def spectral_layers(frame: pd.DataFrame, metric: str = "stable_rank", limit: int = 12) -> list[tuple[str, str]]:
    """The (group, name) of up to ``limit`` weights with ``metric`` values, largest matrices first."""
    if frame is None or frame.empty or metric not in frame.columns:
        return []
    rows = frame[np.isfinite(frame[metric].astype(float))]
    size = (rows["rows"] * rows["cols"] * rows["n_matrices"]).groupby([rows["group"], rows["name"]]).max()
    return list(size.sort_values(ascending=False, kind="stable").index[:limit])


def spectral_figure(frame: pd.DataFrame, metric: str, layers: Sequence[tuple[str, str]], runs: Sequence[str], *,
                    max_steps: int = 500) -> go.Figure:
    """``metric`` over step, one line per (run, layer)."""
    if metric not in SPECTRAL_METRICS:
        raise UsageError(f"spectral metric must be one of {', '.join(SPECTRAL_METRICS)}, got {metric!r}")
    if frame is None or frame.empty:
        return empty_figure("No spectral statistics: run summarize with --spectral default or full")
    rows = frame[frame["run"].isin(runs)]
    rows = rows[[(g, n) in set(map(tuple, layers)) for g, n in zip(rows["group"], rows["name"])]]
    rows = rows[np.isfinite(rows[metric].astype(float))]
    if rows.empty:
        hint = " (α needs --spectral full)" if metric == "alpha" else ""
        return empty_figure(f"No {SPECTRAL_METRICS[metric]} for the chosen layers{hint}")
    fig = go.Figure()
    if metric == "alpha":
        _bands(fig)
    for i, ((run, group, name), series) in enumerate(rows.groupby(["run", "group", "name"], sort=False)):
        series = series.sort_values("step")
        series = series[series["step"].isin(decimate_steps(series["step"].dropna(), max_steps))]
        label = tensor_label(group, name) + (f" ({run})" if len(runs) > 1 else "")
        fig.add_trace(go.Scatter(x=series["step"], y=series[metric].astype(float), mode="lines+markers",
                                 name=label, line={"color": series_color(i)}, marker={"size": 4},
                                 hovertemplate=f"{label}<br>step %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=SPECTRAL_METRICS[metric], xaxis_title="step", yaxis_title=metric, height=460,
                      hovermode="closest", legend={"font": {"size": 10}})
    return fig


def _bands(fig: go.Figure) -> None:
    for lo, hi, label, color in _BANDS:
        fig.add_hrect(y0=lo, y1=hi if hi is not None else 50.0, fillcolor=color, line_width=0, layer="below",
                      annotation_text=f"WeightWatcher: {label}", annotation_position="top left",
                      annotation_font_size=10)
