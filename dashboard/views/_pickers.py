"""Pickers several views share: a checkpoint, a run, a tensor of a run. Each keeps its choice for the session."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ckptboard.core.schema import StatsTables

from ckptboard.dashboard.state import ViewContext, pick_default

__all__ = ["checkpoint_picker", "run_picker", "tensor_picker", "worth_seeing", "worth_seeing_tables"]


def checkpoint_picker(ctx: ViewContext, key: str, label: str = "Checkpoint", *, index: int = -1) -> str:
    """A checkpoint of the chosen runs (default: the first run's ``index``-th, its latest); stops when none."""
    names = ctx.checkpoints()
    if not names:
        st.info("No readable checkpoints in the chosen runs and step range.")
        st.stop()
    first_run = ctx.checkpoints(ctx.runs[0]) or names
    pick_default(key, names, first_run[index])
    return st.selectbox(label, names, key=key, format_func=ctx.checkpoint_label, persist_state="session")


def run_picker(ctx: ViewContext, key: str, label: str = "Run") -> str:
    """One of the chosen runs."""
    pick_default(key, ctx.runs, ctx.runs[0])
    return st.selectbox(label, ctx.runs, key=key, persist_state="session")


def tensor_picker(ctx: ViewContext, run: str, key: str, label: str = "Tensor") -> tuple[str, str]:
    """A ``(group, name)`` of ``run`` matching the sidebar filter, largest first; the default is one worth seeing
    (:func:`worth_seeing`); stops with a hint when there is none."""
    frame = ctx.tensor_index()
    frame = frame.loc[frame["run"] == run, ["group", "name", "numel"]]
    frame = frame.groupby(["group", "name"], as_index=False, sort=True)["numel"].max()
    frame = frame.sort_values("numel", ascending=False, kind="stable")[["group", "name"]]
    frame = frame[ctx.matches(frame["name"].tolist())]
    options = list(frame.itertuples(index=False, name=None))
    if not options:
        st.info(f"No tensor of run {run!r} matches the sidebar filter.")
        st.stop()
    several_groups = frame["group"].nunique() > 1
    pick_default(key, options, lambda: worth_seeing(worth_seeing_tables(ctx, run), run, options))
    return st.selectbox(
        label, options, key=key, persist_state="session",
        format_func=lambda gn: f"{gn[0]} › {gn[1]}" if several_groups and gn[0] else gn[1],
    )  # fmt: skip


# What :func:`worth_seeing` reads of the tensors and updates tables (each table keeps the ones it has).
_WORTH_SEEING_COLUMNS = ("run", "group", "name", "kind", "trainable", "numel", "update_norm")


def worth_seeing_tables(ctx: ViewContext, run: str):
    """``run``'s tables narrowed to the few columns :func:`worth_seeing` reads."""
    return ctx.narrow(runs=[run], columns=_WORTH_SEEING_COLUMNS).tables


def worth_seeing(tables: StatsTables, run: str, options: list[tuple[str, str]]) -> tuple[str, str]:
    """The tensor a first look should show: the largest trainable parameter that changes over the run (not a
    16-value BatchNorm bias, a frozen stem or a constant LayerNorm); else the largest parameter; else the first."""
    t = tables.tensors
    params = t[(t["run"] == run) & (t["kind"] == "parameter") & (t["trainable"].astype(str) != "false")]
    sizes = params.groupby(["group", "name"])["numel"].max().sort_values(ascending=False, kind="stable")
    u = tables.updates
    moved = u[u["run"] == run].groupby(["group", "name"])["update_norm"].max()
    moved = set(moved[pd.to_numeric(moved, errors="coerce") > 0].index)
    offered = set(options)
    for wanted in (lambda k: k in moved, lambda k: True):
        for key in sizes.index:
            if key in offered and wanted(key):
                return key
    return options[0]
