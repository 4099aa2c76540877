"""Spectral: alpha, stable rank or sigma_max per layer over training (``summarize --spectral default|full``)."""

from __future__ import annotations

import streamlit as st

from ckptboard.dashboard.figures.spectral import SPECTRAL_METRICS, spectral_figure, spectral_layers
from ckptboard.dashboard.state import ViewContext, memo, pick_default
from ckptboard.dashboard.views._tables import capped, capped_table

__all__ = ["render"]

_BANDS_NOTE = ("Shaded: WeightWatcher's published reading of α (below 2 \"over-trained\", 2–6 \"well-trained\", above 6 "
               "\"under-trained\"), drawn as WeightWatcher states it; not a ckptboard verdict.")


_LAST_COLUMNS = ["run", "name", "rows", "cols", "n_matrices", "method", "sigma_max", "stable_rank", "alpha",
                 "alpha_band"]


def _figure(tables, metric: str, layers: tuple, runs: tuple):
    return spectral_figure(tables.spectral, metric, list(layers), list(runs))


def render(ctx: ViewContext) -> None:
    with st.container(key='spectral_view'):  # one element to find the view by, drawn or empty
        _render(ctx)


def _render(ctx: ViewContext) -> None:
    frame = ctx.tables.spectral
    if frame.empty:
        st.info("No spectral statistics in the cache: run `ckptboard summarize ROOT --spectral default` (top "
                "singular value, stable rank) or `--spectral full` (also the power-law α of each spectrum).")
        st.stop()
    left, right = st.columns([2, 5])
    with left:
        metrics = list(SPECTRAL_METRICS)
        pick_default("spectral_metric", metrics, "alpha" if frame["alpha"].notna().any() else "stable_rank")
        metric = st.selectbox("Metric", metrics, key="spectral_metric", format_func=SPECTRAL_METRICS.get,
                              persist_state="session")
    labels = {f"{g}:{n}" if g else n: (g, n) for g, n in spectral_layers(frame, "sigma_max", limit=10_000)}
    options = [label for label in labels if ctx.matches([labels[label][1]])[0]]
    with right:
        pick_default("spectral_layers", options,
                     lambda: [f"{g}:{n}" if g else n for g, n in spectral_layers(frame, metric, 6)])
        chosen = st.multiselect("Layers", options, key="spectral_layers", persist_state="session",
                                placeholder="type to search; largest matrices first")
    if not chosen:
        st.info("Choose one or more layers above.")
        st.stop()
    fig = memo(_figure, ctx, metric, tuple(labels[c] for c in chosen), tuple(ctx.runs))
    st.plotly_chart(fig, key="spectral_chart")
    if metric == "alpha":
        st.caption(_BANDS_NOTE)
    last = frame.loc[frame["step"] == frame["step"].max(), _LAST_COLUMNS]
    capped_table(capped(last), len(last), key="spectral_table", what="layers", chosen="the first, in file order",
                 whole=lambda: last, file_name="spectral-last.csv")
