"""The module tree of one checkpoint as a treemap or sunburst, with its pickers: drawn by the Size & FLOPs and the
Tensors views from the module roll-up computed in the query (:func:`ckptboard.core.dataset.module_rollup`), not from
every tensor's row."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ckptboard.core.dataset import module_rollup
from ckptboard.core.size import SizeNode
from ckptboard.dashboard.figures.size import ChartKind, SizeMetric, rollup_tree, size_treemap
from ckptboard.dashboard.state import ViewContext, memo, pick_default

__all__ = ["module_tree_chart", "checkpoint_rollup", "size_tree"]

_METRIC_LABELS = {SizeMetric.ELEMENTS: "elements (with buffers)"}


def checkpoint_rollup(tables, checkpoint: str, depth: int | None = None) -> pd.DataFrame:
    """The module roll-up of one checkpoint to ``depth``: computed in the scan of a dataset view, or from whole
    tables' tensor rows (tests, notebooks)."""
    if hasattr(tables, "dataset"):
        return tables.dataset.module_rollup(tables.selection.narrow(checkpoints=[checkpoint]), depth)
    rows = tables.tensors[tables.tensors["checkpoint"] == checkpoint]
    return module_rollup(rows, depth)


def size_tree(tables, checkpoint: str, group: str, depth: int | None = None) -> SizeNode:
    """The size tree of one state_dict (``group``) of one checkpoint, down to ``depth``."""
    rollup = checkpoint_rollup(tables, checkpoint, depth)
    return rollup_tree(rollup[rollup["group"].fillna("").astype(str) == group])


def _size_chart(tables, checkpoint: str, group: str, metric: str, chart: str, depth: int | None = None):
    return size_treemap(size_tree(tables, checkpoint, group, depth), metric, chart=chart, max_depth=depth)


def _groups(ctx: ViewContext, checkpoint: str) -> list[str]:
    """The state_dicts (groups) of ``checkpoint``: one for a plain model, two with an EMA copy, …"""
    rollup = memo(checkpoint_rollup, ctx.narrow(checkpoints=[checkpoint]), checkpoint, 1)
    return sorted(rollup["group"].fillna("").astype(str).unique())


def module_tree_chart(ctx: ViewContext, checkpoint: str, *, key_prefix: str) -> str:
    """The module tree of ``checkpoint`` as a treemap or sunburst, sized by bytes, parameters or elements;
    returns the state_dict (group) drawn, chosen here when the checkpoint holds several (model and EMA)."""
    groups = _groups(ctx, checkpoint) or [""]
    cols = st.columns([2, 3, 2] if len(groups) > 1 else [3, 2])
    group = groups[0]
    if len(groups) > 1:
        key = f"{key_prefix}_group"
        pick_default(key, groups, groups[0])
        with cols[0]:
            group = st.selectbox("State dict", groups, key=key, format_func=lambda g: g or "(top level)",
                                 persist_state="session")
    mid, right = cols[-2:]
    with mid:
        pick_default(f"{key_prefix}_metric", list(SizeMetric), SizeMetric.BYTES)
        metric = st.segmented_control(
            "Size by", list(SizeMetric), key=f"{key_prefix}_metric", required=True, persist_state="session",
            format_func=lambda m: _METRIC_LABELS.get(m, str(m)),
        )  # fmt: skip
    with right:
        pick_default(f"{key_prefix}_chart", list(ChartKind), ChartKind.TREEMAP)
        chart = st.segmented_control("Chart", list(ChartKind), key=f"{key_prefix}_chart", required=True,
                                     persist_state="session")
    # The sidebar's module depth decides how deep the boxes go (click a box to zoom into it).
    shown = ctx.narrow(checkpoints=[checkpoint])
    st.plotly_chart(memo(_size_chart, shown, checkpoint, group, metric, chart, ctx.depth),
                    key=f"{key_prefix}_tree_chart")
    return group
