"""Scalars: a statistic over steps for chosen tensors or whole modules, runs overlaid, TensorBoard's smoothing;
below it the training scalars logged beside the checkpoints (loss, learning rate, …) on the same step axis."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from ckptboard.dashboard.figures.scalars import STATISTICS, scalar_columns, scalar_figure
from ckptboard.dashboard.figures.training import step_extent, training_names, training_scalar_figure
from ckptboard.dashboard.state import ViewContext, memo, pick_default
from ckptboard.dashboard.views import LinesPer
from ckptboard.dashboard.views._pickers import tensor_multiselect

__all__ = ["render"]

_DEFAULT_LINES = 4


def render(ctx: ViewContext) -> None:
    top = st.columns([2, 2, 3, 1])
    with top[0]:
        pick_default("scalars_stat", list(STATISTICS), "norm")
        stat = st.selectbox(
            "Statistic", list(STATISTICS), key="scalars_stat", format_func=STATISTICS.get, persist_state="session"
        )
    with top[1]:
        pick_default("scalars_by", list(LinesPer), LinesPer.TENSORS)
        by = st.segmented_control(
            "Lines per", list(LinesPer), key="scalars_by", required=True, persist_state="session"
        )
    with top[2]:
        st.session_state.setdefault("scalars_smoothing", 0.6)  # TensorBoard's default
        smoothing = st.slider("Smoothing", 0.0, 0.99, step=0.01, key="scalars_smoothing", persist_state="session")
    with top[3]:
        log_y = st.toggle("Log y", key="scalars_log_y", persist_state="session")

    tensors = modules = None
    if by == LinesPer.MODULES:
        options = ctx.modules()
        pick_default("scalars_modules", options, options[:_DEFAULT_LINES])
        modules = st.multiselect(
            "Modules", options, key="scalars_modules", persist_state="session",
            placeholder="type to search; the sidebar sets the grouping depth",
        )  # fmt: skip
        chosen = modules
    else:
        tensors = tensor_multiselect(ctx, "scalars_tensors", "Tensors", count=_DEFAULT_LINES,
                                     placeholder="type to search; the sidebar filter narrows the list")
        chosen = tensors
    if not chosen:
        st.info(f"Choose one or more {by.lower()} above to draw {STATISTICS[stat]} over training.")
        st.stop()
    columns = scalar_columns(stat)  # a few of the tensors table's 41 columns: what the chart draws
    if tensors:
        shown = ctx.narrow(names=tensors, columns=columns)
    elif all(m and ":" not in m for m in modules):  # a module and its children; ``group:module`` reads them all
        shown = ctx.narrow(modules=modules, columns=columns)
    else:
        shown = ctx.narrow(columns=columns)
    fig = memo(
        scalar_figure, shown, stat, tensors=tensors, modules=modules, runs=ctx.runs, smoothing=smoothing,
        log_y=log_y, step_range=ctx.step_range,
    )  # fmt: skip
    extent = memo(step_extent, ctx, ctx.runs)
    st.plotly_chart(_on_steps(fig, extent), key="scalars_chart")
    _training_scalars(ctx, smoothing, extent)


def _training_scalars(ctx: ViewContext, smoothing: float, extent: tuple[float, float] | None) -> None:
    """Loss, learning rate, … logged beside the checkpoints, below the weights on the same step axis."""
    names = memo(training_names, ctx)
    if not names:
        return
    pick_default("scalars_training", names, names[:1])
    chosen = st.multiselect(
        "Training scalars (logged by the trainer)", names, key="scalars_training", persist_state="session",
        placeholder="loss, learning_rate, grad_norm, …",
    )  # fmt: skip
    if chosen:
        fig = memo(training_scalar_figure, ctx, chosen, runs=ctx.runs, smoothing=smoothing,
                   step_range=ctx.step_range)
        st.plotly_chart(_on_steps(fig, extent), key="scalars_training_chart")


def _on_steps(fig: go.Figure, extent: tuple[float, float] | None) -> go.Figure:
    """A copy of the (shared, memoised) figure with its x axis set to ``extent``."""
    return fig if extent is None else go.Figure(fig).update_xaxes(range=list(extent))
