"""BatchNorm view: running statistics per layer over training, a channel × step heatmap, num_batches_tracked.

Per layer and step the line is the mean over channels and the band spans the channel min to max. More than
``SMALL_MULTIPLES_OVER`` layers are drawn as small multiples (one panel per layer) unless told otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ckptboard.core.errors import UsageError
from ckptboard.core.schema import RunningStat, StatsTables
from ckptboard.dashboard.figures._common import (
    decimate_steps,
    display_labels,
    empty_figure,
    series_color,
    short_labels,
    shorten,
    tensor_label,
)
from ckptboard.dashboard.figures.stepless import on_position_axis

__all__ = ["BatchNormStat", "SMALL_MULTIPLES_OVER", "batchnorm_layers_figure", "batchnorm_heatmap",
           "num_batches_tracked_figure"]

# The running statistics drawn per channel: the batchnorm table's, owned by core.schema.
BatchNormStat = RunningStat

SMALL_MULTIPLES_OVER = 6
_COLS = 4
_MAX_STEPS = 300
# Small multiples in pixels: a panel, the gap above it (its title) and the room a title has (characters).
_PANEL_PX, _GAP_PX, _MARGIN_PX = 200, 64, 150
_TITLE_CHARS = 38
_LEGEND_CHARS = 48


def _check_stat(stat: str) -> None:
    if stat not in list(BatchNormStat):
        raise UsageError(f"BatchNorm statistic must be one of {', '.join(BatchNormStat)}, got {stat!r}")


@on_position_axis
def batchnorm_layers_figure(
    tables: StatsTables,
    run: str,
    stat: str = "running_mean",
    *,
    modules: Sequence[str] | None = None,
    small_multiples: bool | None = None,
) -> go.Figure:
    """Per layer: channel mean of ``stat`` over step (line) with the channel min–max as a band (two traces
    before it); one panel per layer when ``small_multiples`` (default: more than SMALL_MULTIPLES_OVER layers)."""
    _check_stat(stat)
    bn = tables.batchnorm
    bn = bn[bn["run"] == run]
    if modules is not None:
        bn = bn[bn["module"].isin(list(modules)) | bn["module"].radd(bn["group"] + ":").isin(list(modules))]
    if bn.empty:
        return empty_figure(f"No BatchNorm running statistics in {run}")
    bn = bn[bn["step"].isin(decimate_steps(bn["step"], _MAX_STEPS))]
    # Layers in the order they appear (the state_dict's, i.e. the model's), steps ascending within each.
    agg = bn.groupby(["group", "module", "step"], sort=False)[stat].agg(["mean", "min", "max"]).reset_index()
    layers = [(key, df.sort_values("step", kind="stable")) for key, df in agg.groupby(["group", "module"], sort=False)]
    multiples = len(layers) > SMALL_MULTIPLES_OVER if small_multiples is None else bool(small_multiples)
    several_groups = bn["group"].nunique() > 1  # the group is named only where it tells layers apart
    labels = [tensor_label(g, m) if several_groups else m for (g, m), _ in layers]
    rows = math.ceil(len(layers) / _COLS)
    height = rows * _PANEL_PX + (rows - 1) * _GAP_PX + _MARGIN_PX if multiples else 440
    if multiples:
        # Titles cut to a panel's width (full name on hover), a fixed pixel gap so that no title runs into the
        # tick labels above it, and no shared axes: every panel shows its own steps up to the last.
        titles = short_labels(labels, _TITLE_CHARS)
        fig = make_subplots(rows=rows, cols=_COLS, subplot_titles=titles, shared_xaxes=False,
                            vertical_spacing=_GAP_PX / (height - _MARGIN_PX) if rows > 1 else 0.0,
                            horizontal_spacing=0.05)
        fig.update_annotations(font_size=12)
    else:
        fig = go.Figure()
    for i, ((group, module), df) in enumerate(layers):
        label, color = labels[i], series_color(i)
        pos = {"row": i // _COLS + 1, "col": i % _COLS + 1} if multiples else {}
        x = df["step"].to_numpy()
        common = {"legendgroup": label, "meta": {"module": label}}
        fig.add_trace(go.Scatter(x=x, y=df["min"].to_numpy(), mode="lines", line={"width": 0}, showlegend=False,
                                 hoverinfo="skip", name=f"{label} min", **common), **pos)
        fig.add_trace(go.Scatter(x=x, y=df["max"].to_numpy(), mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=_translucent(color), showlegend=False, hoverinfo="skip",
                                 name=f"{label} max", **common), **pos)
        fig.add_trace(go.Scatter(
            x=x, y=df["mean"].to_numpy(), mode="lines", line={"color": color, "width": 1.5},
            name=shorten(label, _LEGEND_CHARS),
            showlegend=not multiples, customdata=df[["min", "max"]].to_numpy(),
            hovertemplate=f"{label}<br>step %{{x}}<br>channel mean %{{y:.4g}}"
                          "<br>min %{customdata[0]:.4g} · max %{customdata[1]:.4g}<extra></extra>",
            **common,
        ), **pos)
    fig.update_layout(title=f"BatchNorm {stat} per layer ({run}): channel mean, band = channel min–max",
                      height=height, hovermode="closest")
    if not multiples:
        fig.update_layout(xaxis_title="step", yaxis_title=stat)
        return fig
    steps = agg["step"].to_numpy(dtype=float)
    pad = max(1.0, 0.02 * (steps.max() - steps.min()))
    fig.update_xaxes(range=[steps.min() - pad, steps.max() + pad], showticklabels=True, nticks=6)
    for i in range(len(layers)):
        row, col = i // _COLS + 1, i % _COLS + 1
        last_in_column = i + _COLS >= len(layers)
        fig.update_xaxes(title_text="step" if last_in_column else None, title_standoff=2, row=row, col=col)
        if col == 1:
            fig.update_yaxes(title_text=stat, row=row, col=col)
    return fig


def _translucent(color: str, alpha: float = 0.2) -> str:
    """``#rrggbb`` as ``rgba(r, g, b, alpha)``."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


@on_position_axis
def batchnorm_heatmap(tables: StatsTables, run: str, module: str, stat: str = "running_mean") -> go.Figure:
    """Channel × step heatmap of ``stat`` for one norm layer (``module`` or ``group:module``)."""
    _check_stat(stat)
    bn = tables.batchnorm
    bn = bn[(bn["run"] == run) & ((bn["module"] == module) | (bn["module"].radd(bn["group"] + ":") == module))]
    if bn.empty:
        return empty_figure(f"No running statistics for {module} in {run}")
    bn = bn[bn["step"].isin(decimate_steps(bn["step"], _MAX_STEPS))]
    grid = bn.pivot_table(index="channel", columns="step", values=stat, aggfunc="mean", dropna=False)
    fig = go.Figure(go.Heatmap(
        x=grid.columns.to_numpy(), y=grid.index.to_numpy(), z=grid.to_numpy(dtype=float), colorscale="Viridis",
        colorbar={"title": {"text": stat}}, name=module,
        hovertemplate="step %{x}<br>channel %{y}<br>" + stat + " %{z:.4g}<extra></extra>",
    ))
    fig.update_layout(title=f"{module} {stat}: channel × step ({run})", xaxis_title="step", yaxis_title="channel",
                      height=max(300, min(900, 12 * len(grid.index) + 160)))
    return fig


@on_position_axis
def num_batches_tracked_figure(tables: StatsTables, run: str) -> go.Figure:
    """``num_batches_tracked`` over step: one line per norm layer, or one line for all when they agree."""
    t = tables.tensors
    rows = t[(t["run"] == run) & t["name"].str.endswith("num_batches_tracked")]
    if rows.empty:
        return empty_figure(f"No num_batches_tracked buffers in {run}")
    # A one-element tensor: its max is its value (mean is NaN-free too, but max keeps integers exact).
    rows = rows.assign(label=display_labels(rows))
    wide = rows.pivot_table(index="step", columns="label", values="max", aggfunc="first", dropna=False).sort_index()
    wide = wide.loc[wide.index.isin(decimate_steps(wide.index, _MAX_STEPS))]
    fig = go.Figure()
    values = wide.to_numpy(dtype=float)
    if wide.shape[1] > 1 and np.array_equal(values, values[:, :1].repeat(wide.shape[1], axis=1), equal_nan=True):
        series = [(f"all {wide.shape[1]} layers", values[:, 0])]
    else:
        series = [(str(name), wide[name].to_numpy(dtype=float)) for name in wide.columns]
    for i, (name, y) in enumerate(series):
        fig.add_trace(go.Scatter(x=wide.index.to_numpy(), y=y, mode="lines+markers", name=shorten(name, _LEGEND_CHARS),
                                 line={"color": series_color(i)}, meta={"name": name},
                                 hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:,}} batches<extra></extra>"))
    fig.update_layout(title=f"num_batches_tracked ({run})", xaxis_title="step", yaxis_title="batches", height=360)
    return fig
