"""Histograms: a tensor's histograms over training (offset / overlay, one common binning) and its distribution."""

from __future__ import annotations

import streamlit as st

from ckptboard.dashboard.figures.histograms import (
    FIGURE_COLUMNS,
    HistogramMode,
    distribution_figure,
    histogram_figure,
)
from ckptboard.dashboard.state import ViewContext, memo, pick_default
from ckptboard.dashboard.views._pickers import run_picker, tensor_picker

__all__ = ["render"]


def render(ctx: ViewContext) -> None:
    left, mid, right = st.columns([2, 4, 2])
    with left:
        run = run_picker(ctx, "hist_run")
    with mid:
        group, name = tensor_picker(ctx, run, "hist_tensor")
    with right:
        pick_default("hist_mode", list(HistogramMode), HistogramMode.OFFSET)
        mode = st.segmented_control("Mode", list(HistogramMode), key="hist_mode", required=True,
                                    persist_state="session")
    # One tensor's rows are read, and of them only the columns the figures draw.
    shown = ctx.narrow(runs=[run], names=[name], columns=FIGURE_COLUMNS)
    st.plotly_chart(memo(histogram_figure, shown, run, group, name, mode=mode), key="hist_chart")
    st.subheader("Distribution")
    st.plotly_chart(memo(distribution_figure, shown, run, group, name), key="hist_distribution_chart")
