"""Scalars: a statistic over steps for chosen tensors or whole modules, runs overlaid, TensorBoard's smoothing;
below it the training scalars logged beside the checkpoints (loss, learning rate, …) on the same step axis."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from ckptboard.dashboard.figures.scalars import STATISTICS, scalar_figure
from ckptboard.dashboard.figures.training import step_extent, training_names, training_scalar_figure
from ckptboard.dashboard.state import ViewContext, memo, pick_default
from ckptboard.dashboard.views import LinesPer
from ckptboard.dashboard.views._pickers import worth_seeing, worth_seeing_tables

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
        options = ctx.tensor_names()
        pick_default("scalars_tensors", options, lambda: _largest_parameters(ctx, options))
        tensors = st.multiselect(
            "Tensors", options, key="scalars_tensors", persist_state="session",
            placeholder="type to search; the sidebar filter narrows the list",
        )  # fmt: skip
        chosen = tensors
    if not chosen:
        st.info(f"Choose one or more {by.lower()} above to draw {STATISTICS[stat]} over training.")
        st.stop()
    if tensors:
        shown = ctx.narrow(names=tensors)
    elif all(m and ":" not in m for m in modules):  # a module and its children; ``group:module`` reads them all
        shown = ctx.narrow(modules=modules)
    else:
        shown = ctx
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


def _largest_parameters(ctx: ViewContext, options: list[str]) -> list[str]:
    """The first lines a user sees: each run's tensor worth seeing (so that every run draws a line), then the
    largest parameters (buffers such as step counters would dwarf them), _DEFAULT_LINES in all when runs allow."""
    frame = ctx.tensor_index()
    chosen: list[str] = []
    allowed = set(options)  # a list of 20,000 names: membership in a set, not a scan per tensor
    for run in ctx.runs:
        names = frame.loc[frame["run"] == run, ["group", "name"]].drop_duplicates()
        offered = [key for key in names.itertuples(index=False, name=None) if key[1] in allowed]
        if offered:
            name = worth_seeing(worth_seeing_tables(ctx, run), run, offered)[1]
            if name not in chosen:
                chosen.append(name)
    params = frame[(frame["kind"] == "parameter") & frame["name"].isin(options)]
    largest = params.groupby("name")["numel"].max().sort_values(ascending=False, kind="stable")
    for name in largest.index:
        if len(chosen) >= _DEFAULT_LINES:
            break
        if name not in chosen:
            chosen.append(name)
    return chosen or options[:_DEFAULT_LINES]
