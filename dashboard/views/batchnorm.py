"""BatchNorm: running mean/var per layer over training, a channel × step heatmap, ``num_batches_tracked``."""

from __future__ import annotations

import re

import streamlit as st

from ckptboard.dashboard.figures.batchnorm import (
    BatchNormStat,
    batchnorm_heatmap,
    batchnorm_layers_figure,
    num_batches_tracked_figure,
)
from ckptboard.dashboard.state import ViewContext, memo, pick_default
from ckptboard.dashboard.views._pickers import run_picker

__all__ = ["render"]

_FIRST_LAYERS = 12  # small multiples of 3 rows: TensorBoard too pages its charts rather than drawing hundreds


def render(ctx: ViewContext) -> None:
    left, right = st.columns([3, 2])
    with left:
        run = run_picker(ctx, "bn_run")
    bn = ctx.tables.batchnorm
    layers = sorted(bn.loc[bn["run"] == run, "module"].unique(), key=_natural)
    layers = [m for m, keep in zip(layers, ctx.matches(layers)) if keep]
    if not layers:
        st.info(f"Run {run!r} has no BatchNorm-style running statistics" + (" matching the filter." if ctx.pattern else "."))
        st.stop()
    with right:
        pick_default("bn_stat", list(BatchNormStat), BatchNormStat.RUNNING_MEAN)
        stat = st.segmented_control("Statistic", list(BatchNormStat), key="bn_stat", required=True,
                                    persist_state="session")
    pick_default("bn_layers", layers, layers[:_FIRST_LAYERS])
    shown = st.multiselect(
        "Layers drawn", layers, key="bn_layers", persist_state="session",
        placeholder="type to search; the sidebar filter narrows the list",
    )  # fmt: skip
    if len(layers) > len(shown):
        st.caption(f"{len(shown)} of {len(layers)} layers drawn: add more above, or narrow with the sidebar filter.")
    if shown:
        st.plotly_chart(memo(batchnorm_layers_figure, ctx, run, stat, modules=shown), key="bn_layers_chart")
    pick_default("bn_layer", layers, layers[0])
    layer = st.selectbox("Channels of layer", layers, key="bn_layer", persist_state="session")
    st.plotly_chart(memo(batchnorm_heatmap, ctx, run, layer, stat), key="bn_heatmap_chart")
    st.subheader("num_batches_tracked")
    index = ctx.tensor_index()
    tracked = sorted(set(index.loc[index["name"].str.endswith("num_batches_tracked"), "name"]))
    shown = ctx.narrow(runs=[run], names=tracked)
    st.plotly_chart(memo(num_batches_tracked_figure, shown, run), key="bn_tracked_chart")


def _natural(module: str) -> list:
    """Sort key putting ``blocks.2.bn`` before ``blocks.10.bn``, as in the model."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", module)]
