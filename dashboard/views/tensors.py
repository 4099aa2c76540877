"""Tensors: the parameter/buffer table of a chosen checkpoint, filtered by regex, kind and module; a size tree."""

from __future__ import annotations

import streamlit as st

from ckptboard.core.records import TensorKind
from ckptboard.dashboard.figures.tensors import TENSOR_TABLE_INPUT, tensor_rows, tensor_table, tensor_table_of
from ckptboard.dashboard.state import ViewContext, detached, memo
from ckptboard.dashboard.views._module_tree import module_tree_chart
from ckptboard.dashboard.views._pickers import checkpoint_picker
from ckptboard.dashboard.views._tables import TABLE_ROWS, capped, capped_table

__all__ = ["render", "shown_tensors"]

_ANY_MODULE = "(all modules)"


def shown_tensors(tables, checkpoint: str, limit: int = TABLE_ROWS, **filters) -> tuple:
    """The rows of :func:`tensor_table` the view sends (the ``limit`` largest by elements, in file order) and
    how many match: only these are formatted and kept in the memo, not the whole table."""
    rows = tensor_rows(tables, checkpoint, **filters)
    return tensor_table_of(capped(rows, limit, largest="numel")), len(rows)


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
    filters = {"pattern": ctx.pattern, "kinds": [str(k) for k in kinds] or None,
               "module": None if module == _ANY_MODULE else module}
    # One checkpoint's rows, the columns the table shows, kinds pushed down to the read (the regex and module
    # prefix are applied by tensor_table).
    narrowed = ctx.narrow(checkpoints=[checkpoint], columns=TENSOR_TABLE_INPUT, kinds=filters["kinds"])
    table, total = memo(shown_tensors, narrowed, checkpoint, **filters)
    st.caption(f"{total:,} tensors" + (f" matching `{ctx.pattern}`" if ctx.pattern else ""))
    capped_table(table, total, key="tensors_table", what="tensors", chosen="the largest by elements, in file order",
                 whole=lambda: tensor_table(detached(narrowed.tables), checkpoint, **filters),
                 file_name=f"tensors-{checkpoint.replace('/', '_')}.csv", height=420)
    st.subheader("Module tree")
    module_tree_chart(ctx, checkpoint, key_prefix="tensors")
