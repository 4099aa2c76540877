"""Histograms view: TensorBoard's offset/overlay histograms on one common binning, and the distribution view.

Every drawn step is re-binned onto ``bins`` equal bins over the union of the steps' finite ranges (the outer
edges of their sparse bins), so that shapes compare across steps. When every step holds the same single bin (a
tensor constant over training, e.g. one bf16 bin), the range is widened to ``[c − 0.5, c + 0.5]`` around its
centre, as TensorBoard does for a single value. A step with no finite values (an
all-NaN tensor) has no bins and is left out of the histogram; its percentiles are NaN, drawn as a gap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ckptboard.core.errors import UsageError
from ckptboard.core.histogram import rebin
from ckptboard.core.records import StrEnum
from ckptboard.core.schema import HISTOGRAM_COLUMNS, StatsTables, percentile_column
from ckptboard.dashboard.figures._common import decimate_steps, empty_figure, step_ramp, tensor_label
from ckptboard.dashboard.figures.stepless import POSITION_AXIS_TITLE, on_position_axis, stepless_runs

__all__ = ["HistogramMode", "DISTRIBUTION_BANDS", "FIGURE_COLUMNS", "common_edges", "histogram_figure",
           "distribution_figure"]



class HistogramMode(StrEnum):
    """How a tensor's histograms over steps are drawn: stacked ridges (TensorBoard's offset) or on one axis."""

    OFFSET = "offset"
    OVERLAY = "overlay"


# TensorBoard's distribution bands, outermost first: (lower, upper) percentiles.
DISTRIBUTION_BANDS: tuple[tuple[float, float], ...] = ((0.0, 100.0), (6.68, 93.32), (15.87, 84.13), (30.85, 69.15))
_BAND_OPACITY = (0.18, 0.3, 0.42, 0.55)
# In offset mode the tallest bin rises this fraction of the drawn step span above its baseline (TensorBoard-like
# ridges that overlap their older neighbours), and at least one step spacing.
_RIDGE_HEIGHT = 0.2

# The columns both figures read, of the histograms and tensors tables (each takes those it has): a view reads only
# these (the distribution reads 14 of the tensors table's 41 columns).
FIGURE_COLUMNS: tuple[str, ...] = HISTOGRAM_COLUMNS + tuple(
    percentile_column(q) for q in sorted({*(q for band in DISTRIBUTION_BANDS for q in band), 50.0}))


def _tensor_rows(frame: pd.DataFrame, run: str, group: str, name: str) -> pd.DataFrame:
    """One tensor's rows of ``frame`` in one run, sorted by step."""
    rows = frame[(frame["run"] == run) & (frame["group"] == group) & (frame["name"] == name)]
    return rows.sort_values("step", kind="stable")


def common_edges(lo_lists, hi_lists, bins: int) -> np.ndarray | None:
    """``bins + 1`` equal edges over the union of the finite ``[lo[0], hi[-1]]`` ranges (widened as the module
    doc says); ``None`` if none is finite."""
    lo_all = np.concatenate([np.asarray(lo, dtype=float) for lo in lo_lists] or [np.empty(0)])
    hi_all = np.concatenate([np.asarray(hi, dtype=float) for hi in hi_lists] or [np.empty(0)])
    ok = np.isfinite(lo_all) & np.isfinite(hi_all)
    if not ok.any():
        return None
    a, b = float(lo_all[ok].min()), float(hi_all[ok].max())
    if np.all(lo_all[ok] == a) and np.all(hi_all[ok] == b):  # one bin in every step: a single value
        centre = (a + b) / 2
        a, b = centre - 0.5, centre + 0.5
    return np.linspace(a, b, bins + 1)


@on_position_axis
def histogram_figure(
    tables: StatsTables,
    run: str,
    group: str,
    name: str,
    *,
    mode: str = HistogramMode.OFFSET,
    bins: int = 60,
    max_steps: int = 50,
) -> go.Figure:
    """A tensor's histograms over training, one trace per drawn step, oldest first (so at the back), coloured
    from dark (old) to bright (new): ``offset`` stacks filled outlines with the y baseline at the step,
    ``overlay`` draws the outlines on one count axis."""
    if mode not in list(HistogramMode):
        raise UsageError(f"histogram mode must be one of {', '.join(HistogramMode)}, got {mode!r}")
    if bins < 1:
        raise UsageError(f"bins must be at least 1, got {bins}")
    label = tensor_label(group, name)
    rows = _tensor_rows(tables.histograms, run, group, name)
    rows = rows[rows["counts"].map(lambda c: 0 if c is None else len(c)) > 0]
    if rows.empty:
        return empty_figure(f"No finite values to histogram for {label} in {run}")
    rows = rows[rows["step"].isin(decimate_steps(rows["step"], max_steps))].drop_duplicates("step", keep="last")
    edges = common_edges(rows["lo"], rows["hi"], bins)
    if edges is None:
        return empty_figure(f"No finite values to histogram for {label} in {run}")
    centers = (edges[:-1] + edges[1:]) / 2
    steps = rows["step"].to_numpy()
    stepless = run in stepless_runs(tables)
    names = [str(c) if stepless else f"step {s:g}" for c, s in zip(rows["checkpoint"], steps)]
    counts = np.stack([rebin(lo, hi, c, edges) for lo, hi, c in zip(rows["lo"], rows["hi"], rows["counts"])])
    colors = step_ramp(len(steps))
    fig = go.Figure()
    if mode == "overlay":
        for step, name, y, color in zip(steps, names, counts, colors):
            fig.add_trace(go.Scatter(
                x=centers, y=y, mode="lines", line={"color": color, "width": 1.5, "shape": "hvh"},
                name=name, meta={"step": int(step)},
                hovertemplate=f"{name}<br>x %{{x:.4g}}<br>count %{{y:.4g}}<extra></extra>",
            ))
        fig.update_layout(yaxis_title="count")
    else:
        spacing = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
        height = max(_RIDGE_HEIGHT * float(steps[-1] - steps[0]), spacing)
        scale = height / max(float(counts.max()), 1e-300)
        x = np.concatenate([[edges[0]], centers, [edges[-1]]])
        for step, name, y, color in zip(steps, names, counts, colors):
            # y axis is reversed (oldest at the top, at the back); a ridge rises towards smaller y.
            ridge = step - scale * np.concatenate([[0.0], y, [0.0]])
            fig.add_trace(go.Scatter(
                x=x, y=ridge, mode="lines", fill="toself", fillcolor=_blend_white(color, 0.75),
                line={"color": color, "width": 1}, name=name, meta={"step": int(step)},
                customdata=np.concatenate([[0.0], y, [0.0]]),
                hovertemplate=f"{name}<br>x %{{x:.4g}}<br>count %{{customdata:.4g}}<extra></extra>",
            ))
        # Ticks only at drawn steps: the space above the oldest baseline holds ridges, not steps.
        ticks = decimate_steps(steps, 8)
        if stepless:
            label_of = dict(zip(steps, names))
            fig.update_yaxes(autorange="reversed", tickvals=ticks, ticktext=[label_of[t] for t in ticks])
        else:
            fig.update_yaxes(autorange="reversed", tickvals=ticks)
        fig.update_layout(yaxis_title=POSITION_AXIS_TITLE if stepless else "step")
    fig.update_layout(title=f"{label} — histograms ({run})", xaxis_title="value", showlegend=False, height=460,
                      hovermode="closest")
    return fig


def _blend_white(color: str, amount: float) -> str:
    """An opaque ``rgb()`` between ``color`` (``rgb(r, g, b)`` or ``#rrggbb``) and white: front ridges hide
    the ones behind."""
    if color.startswith("#"):
        rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    else:
        rgb = [float(v) for v in color[color.index("(") + 1 : color.index(")")].split(",")[:3]]
    r, g, b = (round(c + (255 - c) * amount) for c in rgb)
    return f"rgb({r}, {g}, {b})"


@on_position_axis
def distribution_figure(tables: StatsTables, run: str, group: str, name: str, *, max_steps: int = 500) -> go.Figure:
    """Bands between TensorBoard's symmetric basis-point percentiles (min–max, 6.68–93.32, 15.87–84.13,
    30.85–69.15) and the median line over step: two traces per band (lower, then upper filled to it), median last."""
    label = tensor_label(group, name)
    rows = _tensor_rows(tables.tensors, run, group, name)
    if rows.empty:
        return empty_figure(f"No statistics for {label} in {run}")
    rows = rows[rows["step"].isin(decimate_steps(rows["step"], max_steps))]
    x = rows["step"].to_numpy()
    fig = go.Figure()
    for (q_lo, q_hi), opacity in zip(DISTRIBUTION_BANDS, _BAND_OPACITY):
        band = f"p{q_lo:g}–p{q_hi:g}"
        fig.add_trace(go.Scatter(
            x=x, y=rows[percentile_column(q_lo)].to_numpy(dtype=float), mode="lines", line={"width": 0},
            showlegend=False, hoverinfo="skip", name=f"{band} lower", meta={"band": band, "q": q_lo},
        ))
        fig.add_trace(go.Scatter(
            x=x, y=rows[percentile_column(q_hi)].to_numpy(dtype=float), mode="lines", line={"width": 0},
            fill="tonexty", fillcolor=f"rgba(255, 112, 67, {opacity})", name=band, meta={"band": band, "q": q_hi},
            hoverinfo="skip",
        ))
    fig.add_trace(go.Scatter(
        x=x, y=rows[percentile_column(50.0)].to_numpy(dtype=float), mode="lines",
        line={"color": "rgb(191, 54, 12)", "width": 2}, name="median", meta={"q": 50.0},
        hovertemplate="step %{x}<br>median %{y:.4g}<extra></extra>",
    ))
    fig.update_layout(title=f"{label} — distribution ({run})",
                      xaxis_title=POSITION_AXIS_TITLE if run in stepless_runs(tables) else "step", yaxis_title="value", height=420,
                      hovermode="x unified")
    return fig
