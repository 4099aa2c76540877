"""Training scalars (``loss``, ``learning_rate``, ``grad_norm``, ``eval_*`` …, from Trainer's ``log_history`` and
Lightning's ``metrics.csv``) over step: one line per (run, name), TensorBoard's smoothing, drawn on the step axis of
the weight statistics (:func:`step_extent`) so that the two charts of the Scalars view line up."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from ckptboard.core.schema import StatsTables
from ckptboard.dashboard.figures._common import empty_figure
from ckptboard.dashboard.figures.scalars import draw_lines, legend_height, smooth
from ckptboard.dashboard.figures.stepless import on_position_axis

__all__ = ["training_names", "step_extent", "training_scalar_figure"]


def training_names(tables: StatsTables) -> list[str]:
    """The training scalars' names, ``loss``-like names first (then alphabetical)."""
    names = sorted(tables.training_scalars["name"].dropna().unique().tolist())
    return sorted(names, key=lambda n: ("loss" not in n, n))


@on_position_axis
def step_extent(tables: StatsTables, runs: Sequence[str]) -> tuple[float, float] | None:
    """The step range that both the weight statistics and the training scalars of ``runs`` cover: the x range the
    Scalars view gives its two charts so that they line up."""
    steps = pd.concat([frame.loc[frame["run"].isin(list(runs)), "step"]
                       for frame in (tables.checkpoints, tables.training_scalars)])
    steps = pd.to_numeric(steps, errors="coerce").dropna()
    return None if steps.empty else (float(steps.min()), float(steps.max()))


def training_scalar_figure(
    tables: StatsTables,
    names: Sequence[str],
    *,
    runs: Sequence[str] | None = None,
    smoothing: float = 0.0,
    log_y: bool = False,
    step_range: tuple[int, int] | None = None,
    max_points: int = 2000,
) -> go.Figure:
    """``names`` over step, one line per (run, name), from the training_scalars table."""
    smooth([], smoothing)  # validates the weight before any work
    frame = tables.training_scalars
    rows = frame[frame["name"].isin(list(names))]
    if runs is not None:
        rows = rows[rows["run"].isin(list(runs))]
    if step_range is not None:
        rows = rows[rows["step"].between(step_range[0], step_range[1])]
    if rows.empty:
        return empty_figure("No training scalars for this selection")
    rows = rows.sort_values(["run", "name", "step"], kind="stable")
    rows = rows.drop_duplicates(["run", "name", "step"], keep="last")
    fig = go.Figure()
    entries = draw_lines(fig, rows, "name", smoothing=smoothing, max_points=max_points, label="value")
    fig.update_layout(title="training scalars", xaxis_title="step", yaxis_title="value", hovermode="x unified",
                      height=legend_height(entries, minimum=360), yaxis_type="log" if log_y else "linear",
                      legend={"groupclick": "togglegroup", "tracegroupgap": 4})
    return fig
