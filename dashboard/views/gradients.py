"""Gradients: gradient RMS, Adam's update size and its ratio to the weights, read from the saved optimizer state."""

from __future__ import annotations

import streamlit as st

from ckptboard.core.readings import APPROXIMATION
from ckptboard.dashboard.figures.gradients import GRADIENT_METRICS, grad_rms_histogram_figure, gradient_figure
from ckptboard.dashboard.state import ViewContext, memo, pick_default
from ckptboard.dashboard.views import LinesPer
from ckptboard.dashboard.views._pickers import run_picker

__all__ = ["render"]

_DEFAULT_LINES = 4


def _figure(tables, metric: str, labels: tuple, runs: tuple, by_module: bool, log_y: bool):
    return gradient_figure(tables.gradients, metric, list(labels), list(runs), by_module=by_module, log_y=log_y)


def _histogram(tables, run: str, group: str, name: str):
    return grad_rms_histogram_figure(tables.gradients, run, group, name, checkpoints=tables.checkpoints)


def render(ctx: ViewContext) -> None:
    with st.container(key='grad_view'):  # one element to find the view by, drawn or empty
        _render(ctx)


def _render(ctx: ViewContext) -> None:
    frame = ctx.tables.gradients
    if frame.empty:
        st.info("No gradient statistics: the checkpoints hold no Adam (exp_avg, exp_avg_sq) or SGD momentum state.")
        st.stop()
    st.caption(APPROXIMATION)
    top = st.columns([2, 2, 1])
    with top[0]:
        metrics = list(GRADIENT_METRICS)
        pick_default("grad_metric", metrics, "grad_rms" if frame["grad_rms"].notna().any() else "m_norm")
        metric = st.selectbox("Statistic", metrics, key="grad_metric", format_func=GRADIENT_METRICS.get,
                              persist_state="session")
    with top[1]:
        pick_default("grad_by", list(LinesPer), LinesPer.TENSORS)
        by = st.segmented_control("Lines per", list(LinesPer), key="grad_by", required=True, persist_state="session")
    with top[2]:
        st.session_state.setdefault("grad_log_y", True)
        log_y = st.toggle("Log y", key="grad_log_y", persist_state="session")
    by_module = by == LinesPer.MODULES
    column = "module" if by_module else "name"
    values = frame[column].replace("", "(root)") if by_module else frame[column]
    largest = frame.assign(_label=values).groupby("_label")["numel"].max().sort_values(ascending=False, kind="stable")
    options = [label for label in largest.index if ctx.matches([label])[0]]
    key = "grad_modules" if by_module else "grad_tensors"
    pick_default(key, options, options[:_DEFAULT_LINES])
    chosen = st.multiselect("Modules" if by_module else "Tensors", options, key=key, persist_state="session",
                            placeholder="type to search; largest first")
    if not chosen:
        st.info("Choose one or more above.")
        st.stop()
    fig = memo(_figure, ctx, metric, tuple(chosen), tuple(ctx.runs), by_module, log_y)
    st.plotly_chart(fig, key="grad_chart")

    st.subheader("√v̂ per element over training")
    adam = frame[frame["counts"].map(len) > 0]
    if adam.empty:
        st.info("Histograms of √v̂ need Adam's second moment (SGD keeps none).")
        return
    left, right = st.columns(2)
    with left:
        run = run_picker(ctx, "grad_hist_run")
    names = sorted(set(adam.loc[adam["run"] == run, "name"]))
    if not names:
        st.info(f"No Adam state in run {run!r}.")
        return
    with right:
        pick_default("grad_hist_tensor", names, names[0])
        name = st.selectbox("Tensor", names, key="grad_hist_tensor", persist_state="session")
    group = str(adam.loc[(adam["run"] == run) & (adam["name"] == name), "group"].iloc[0])
    st.plotly_chart(memo(_histogram, ctx, run, group, name), key="grad_hist_chart")
