"""Overview view: the checkpoints of every run, their sizes and parameter counts (error cards:
:func:`ckptboard.core.health.error_cards`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ckptboard.core.schema import StatsTables
from ckptboard.dashboard.figures._common import byte_ticks, empty_figure, series_color
from ckptboard.dashboard.text import format_bytes

__all__ = ["checkpoints_table", "runs_overview_figure"]

# One size column (human units; the exact bytes are in the export); metadata is shown under the table.
_TABLE_COLUMNS = (
    "run", "checkpoint", "step", "step_source", "format", "size", "n_tensors", "n_parameters",
    "n_trainable", "n_frozen", "n_buffers", "parameter_bytes", "buffer_bytes", "optimizer",
)
# Runs with equal values draw on top of each other: each run also gets its own marker, dash and a width that
# shrinks with its index, so the lines beneath stay visible around the ones above.
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "cross", "star", "hexagon")
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")



def checkpoints_table(tables: StatsTables, run: str | None = None) -> pd.DataFrame:
    """The checkpoints of one run (or all), sorted by run and step (stepless ones by modification time), with a
    human ``size`` column."""
    df = tables.checkpoints
    if run is not None:
        df = df[df["run"] == run]
    df = df.sort_values(["run", "step", "mtime", "checkpoint"], kind="stable", na_position="last")
    df = df.assign(size=df["size_bytes"].map(format_bytes))
    for column in ("parameter_bytes", "buffer_bytes"):
        if column in df.columns:
            df[column] = df[column].map(format_bytes)
    return df.reindex(columns=[c for c in _TABLE_COLUMNS if c in df.columns or c == "size"]).reset_index(drop=True)


def _parameter_elements(tables: StatsTables) -> pd.Series:
    """Number of parameter elements per checkpoint, counted from the tensors table (tied tensors once)."""
    t = tables.tensors
    params = t[(t["kind"] == "parameter") & t["tied_to"].isna()]
    return params.groupby("checkpoint", sort=False)["numel"].sum()


def runs_overview_figure(tables: StatsTables, elements: pd.Series | None = None) -> go.Figure:
    """Checkpoint file size and parameter count over step, one trace per run in each of two stacked panels.

    ``elements`` (parameter elements by checkpoint, tied tensors once) is counted from the tensors table when not
    given; the app passes it from the module roll-up computed in the query."""
    ck = tables.checkpoints
    if ck.empty:
        return empty_figure("No checkpoints summarised yet")
    ck = ck.sort_values(["run", "step", "mtime", "checkpoint"], kind="stable", na_position="last")
    elements = _parameter_elements(tables) if elements is None else elements
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("checkpoint size", "parameters (elements)"))
    n_runs = ck["run"].nunique()
    for i, (run, df) in enumerate(ck.groupby("run", sort=True)):
        x = df["step"] if df["step"].notna().any() else pd.Series(range(len(df)), index=df.index)
        style = {
            "mode": "lines+markers", "legendgroup": str(run),
            "line": {"color": series_color(i), "dash": _DASHES[i % len(_DASHES)],
                     "width": 1.5 + 2.0 * (n_runs - 1 - i) / max(1, n_runs - 1)},
            "marker": {"symbol": _SYMBOLS[i % len(_SYMBOLS)], "size": 6 + 6 * (n_runs - 1 - i) / max(1, n_runs - 1)},
        }  # fmt: skip
        sizes = df["size_bytes"].map(format_bytes)
        fig.add_trace(go.Scatter(
            x=x, y=df["size_bytes"], name=str(run), customdata=list(zip(df["checkpoint"], sizes)),
            hovertemplate="%{customdata[0]}<br>step %{x}<br>%{customdata[1]}<extra></extra>", **style,
        ), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=x, y=df["checkpoint"].map(elements).to_numpy(dtype=float), name=str(run), showlegend=False,
            customdata=df[["checkpoint"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>step %{x}<br>%{y:,} parameters<extra></extra>", **style,
        ), row=2, col=1)
    # From zero: sizes and counts are usually constant over a run, and a zoomed axis would show 14.5505k ticks.
    values, labels = byte_ticks(float(pd.to_numeric(ck["size_bytes"], errors="coerce").max()))
    fig.update_yaxes(title_text="file size", rangemode="tozero", tickvals=values, ticktext=labels, row=1, col=1)
    fig.update_yaxes(title_text="parameters", rangemode="tozero", tickformat=",d", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title="Runs", height=520, hovermode="closest", legend_title_text="run")
    return fig
