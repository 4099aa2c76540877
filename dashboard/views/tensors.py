"""Tensors: the parameter/buffer table of a chosen checkpoint, filtered by regex, kind and module; a size tree."""

from __future__ import annotations

import streamlit as st

from ckptboard.core.records import TensorKind
from ckptboard.dashboard.figures.tensors import tensor_table
from ckptboard.dashboard.state import ViewContext, memo
from ckptboard.dashboard.views._pickers import checkpoint_picker
from ckptboard.dashboard.views._module_tree import module_tree_chart

__all__ = ["render"]

_ANY_MODULE = "(all modules)"


def render(ctx: ViewContext) -> None:
    left, mid, right = st.columns([3, 2, 2])
    with left:
        checkpoint = checkpoint_picker(ctx, "tensors_checkpoint")
    with mid:
        kinds = st.multiselect(
            "Kind", list(TensorKind), key="tensors_kinds", placeholder="parameters and buffers",
            persist_state="session",
        )  # fmt: skip
    with right:
        module = st.selectbox(
            "Module", [_ANY_MODULE, *ctx.modules()], key="tensors_module", persist_state="session",
            help="module paths cut to the sidebar's grouping depth",
        )  # fmt: skip
    table = memo(
        tensor_table, ctx.narrow(checkpoints=[checkpoint]), checkpoint, pattern=ctx.pattern,
        kinds=[str(k) for k in kinds] or None,
        module=None if module == _ANY_MODULE else module,
    )  # fmt: skip
    st.caption(f"{len(table)} tensors" + (f" matching `{ctx.pattern}`" if ctx.pattern else ""))
    st.dataframe(table, hide_index=True, key="tensors_table", height=420)
    st.subheader("Module tree")
    module_tree_chart(ctx, checkpoint, key_prefix="tensors")
