"""Size & FLOPs: the size breakdown of a checkpoint (treemap or sunburst by module, bytes by dtype, parameters vs
buffers) and, when a model SPEC and an input shape are given, the FLOP breakdown."""

from __future__ import annotations

import streamlit as st

from ckptboard.core.errors import CkptboardError, UsageError
from ckptboard.core.flops import count_flops
from ckptboard.core.model_spec import load_model
from ckptboard.dashboard.config import parse_input_shape, resolve_under_root
from ckptboard.dashboard.figures.size import dtype_bars, flops_treemap
from ckptboard.dashboard.state import ViewContext, memo, pick_default
from ckptboard.dashboard.views._module_tree import checkpoint_tensors, module_tree_chart, size_tree
from ckptboard.dashboard.views._pickers import checkpoint_picker

__all__ = ["render", "checked_spec"]


def render(ctx: ViewContext) -> None:
    checkpoint = checkpoint_picker(ctx, "size_checkpoint")
    group = module_tree_chart(ctx, checkpoint, key_prefix="size")
    frame = checkpoint_tensors(ctx, checkpoint)
    frame = frame[frame["group"].fillna("").astype(str) == group]
    left, right = st.columns(2)
    with left:
        st.plotly_chart(memo(_dtype_bars, ctx.narrow(checkpoints=[checkpoint]), checkpoint, group), key="size_dtype_chart")
    with right:
        kinds = frame.groupby("kind", as_index=False)[["numel", "nbytes"]].sum()
        kinds["tensors"] = frame.groupby("kind")["name"].size().to_numpy()
        st.dataframe(kinds, hide_index=True, key="size_kinds_table")
    st.subheader("FLOPs")
    _flops(ctx)


def _dtype_bars(tables, checkpoint: str, group: str):
    return dtype_bars(size_tree(tables, checkpoint, group))


def checked_spec(root, spec: str) -> str:
    """A model SPEC typed into the app: its ``file.py`` must lie under ROOT (dotted module specs are refused)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(f"model SPEC {spec!r}: expected 'path/to/file.py:factory' (a file under ROOT)")
    if not target.endswith(".py"):
        raise UsageError(
            f"model SPEC {spec!r}: in the app only a .py file under ROOT is accepted; "
            "pass a package.module:factory SPEC on the command line with --model"
        )
    return f"{resolve_under_root(root, target)}:{attr}"


@st.cache_resource(show_spinner="Counting FLOPs…", max_entries=8)
def _flop_report(spec: str, shape: tuple[int, ...]):
    return count_flops(load_model(spec), shape, build_cpu_model=lambda: load_model(spec, device="cpu"))


def _flops(ctx: ViewContext) -> None:
    config = ctx.config
    st.session_state.setdefault("flops_model", config.model or "")
    st.session_state.setdefault("flops_input_shape", ",".join(map(str, config.input_shape or ())))
    left, right = st.columns([3, 1])
    with left:
        typed = st.text_input(
            "Model SPEC", key="flops_model", placeholder="path/under/ROOT/model.py:Net", persist_state="session",
        )  # fmt: skip
    with right:
        shape_text = st.text_input("Input shape", key="flops_input_shape", placeholder="1,3,32,32",
                                   persist_state="session")
    if not typed or not shape_text:
        st.info("Give a model SPEC (a `file.py:factory` under ROOT) and an input shape to see the FLOP breakdown.")
        return
    try:
        # The command line's --model is trusted as given; what is typed here must stay under ROOT.
        spec = typed if typed == config.model else checked_spec(config.root, typed)
        report = _flop_report(spec, parse_input_shape(shape_text))
    except CkptboardError as e:
        st.error(f"{type(e).__name__}: {e}")
        return
    st.plotly_chart(flops_treemap(report), key="flops_chart")
