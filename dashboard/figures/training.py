"""Training scalars (``loss``, ``learning_rate``, ``grad_norm``, ``eval_*`` …, from Trainer's ``log_history`` and
Lightning's ``metrics.csv``) over step: one line per (run, name), TensorBoard's smoothing, drawn on the step axis of
the weight statistics so that the two charts of the Scalars view line up."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ckptboard.dashboard.figures._common import decimate_steps, empty_figure, series_color
from ckptboard.dashboard.figures.scalars import smooth

__all__ = ["training_names", "training_scalar_figure"]


def training_names(frame: pd.DataFrame) -> list[str]:
    """The scalar names of ``frame``, ``loss``-like names first (then alphabetical)."""
    names = sorted(frame["name"].dropna().unique().tolist())
    return sorted(names, key=lambda n: ("loss" not in n, n))


def training_scalar_figure(
    frame: pd.DataFrame,
    names: Sequence[str],
    *,
    runs: Sequence[str] | None = None,
    smoothing: float = 0.0,
    log_y: bool = False,
    step_range: tuple[int, int] | None = None,
    x_range: tuple[float, float] | None = None,
    max_points: int = 2000,
) -> go.Figure:
    """``names`` over step per run (``frame``: the training_scalars table); ``x_range`` aligns it with another
    chart's step axis."""
    smooth([], smoothing)  # validates the weight before any work
    rows = frame[frame["name"].isin(list(names))]
    if runs is not None:
        rows = rows[rows["run"].isin(list(runs))]
    if step_range is not None:
        rows = rows[rows["step"].between(step_range[0], step_range[1])]
    if rows.empty:
        return empty_figure("No training scalars for this selection")
    rows = rows.sort_values(["run", "name", "step"], kind="stable").drop_duplicates(["run", "name", "step"], keep="last")
    fig = go.Figure()
    n_runs = rows["run"].nunique()
    for i, ((run, name), df) in enumerate(rows.groupby(["run", "name"], sort=True)):
        keep = df["step"].isin(decimate_steps(df["step"], max_points)).to_numpy()
        x, raw = df["step"].to_numpy()[keep], df["value"].to_numpy(dtype=float)
        label = f"{name} · {run}" if n_runs > 1 else str(name)
        color = series_color(i)
        if smoothing > 0:
            fig.add_trace(go.Scatter(
                x=x, y=raw[keep], mode="lines", line={"color": color, "width": 1}, opacity=0.25, legendgroup=label,
                showlegend=False, hoverinfo="skip", name=label, meta={"run": run, "name": name, "raw": True},
            ))
        fig.add_trace(go.Scatter(
            x=x, y=np.asarray(smooth(raw, smoothing))[keep], mode="lines", line={"color": color, "width": 2},
            name=label, legendgroup=label, meta={"run": run, "name": name, "raw": False},
            hovertemplate=f"{label}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
        ))
    fig.update_layout(title="training scalars", xaxis_title="step", yaxis_title="value", hovermode="x unified",
                      height=360, yaxis_type="log" if log_y else "linear")
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    return fig
