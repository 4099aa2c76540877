"""Compare: two checkpoints, or two runs at a step — tensors added, removed, reshaped and the largest changes."""

from __future__ import annotations

from types import SimpleNamespace

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ckptboard.core.errors import CkptboardError
from ckptboard.core.health import compare_checkpoints
from ckptboard.dashboard.figures.compare import compare_figure
from ckptboard.dashboard.figures.diff import diff_frame, diff_histogram_figure
from ckptboard.dashboard.state import ViewContext, memo, pick_default
from ckptboard.dashboard.views._pickers import checkpoint_picker, run_picker
from ckptboard.dashboard.views._tables import capped, capped_table

__all__ = ["render", "MODES"]

TWO_CHECKPOINTS, TWO_RUNS = "Two checkpoints", "Two runs at a step"
MODES = (TWO_CHECKPOINTS, TWO_RUNS)


def render(ctx: ViewContext) -> None:
    pick_default("compare_mode", MODES, TWO_CHECKPOINTS)
    mode = st.segmented_control("Compare", MODES, key="compare_mode", required=True, persist_state="session")
    a, b = _two_runs(ctx) if mode == TWO_RUNS else _two_checkpoints(ctx)
    if a == b:
        st.info("Choose two different checkpoints.")
        st.stop()
    runs = ctx.tables.checkpoints.set_index("checkpoint")["run"]
    # The runs of a and b only: their checkpoints table stays whole (compare finds each run's first checkpoint).
    result = memo(_compare, ctx.narrow(runs=sorted({runs.get(a), runs.get(b)} - {None})), a, b)
    cols = st.columns(4)
    cols[0].metric("Added", len(result.added))
    cols[1].metric("Removed", len(result.removed))
    cols[2].metric("Reshaped", len(result.reshaped))
    cols[3].metric("Compared", len(result.changes))
    _lists(result)
    top = st.slider("Largest changes shown", 5, 100, key="compare_top", value=20, persist_state="session")
    st.plotly_chart(compare_figure(result, top=top), key="compare_chart")
    changes = result.changes  # ranked: floating tensors first, each part by relative change, largest first
    capped_table(capped(changes), len(changes), key="compare_table", what="tensors", chosen="the largest changes",
                 whole=lambda: changes, file_name="compare.csv")
    _exact(ctx, a, b)


# What compare_checkpoints reads of the tensors and updates tables (each table takes the ones it has).
_COMPARE_COLUMNS = ("run", "checkpoint", "prev_checkpoint", "group", "name", "module", "kind", "shape", "dtype",
                    "numel", "mean", "std", "norm", "update_norm", "dist_from_first")


def _compare(tables, a: str, b: str):
    """:func:`compare_checkpoints` reading the tensor and update rows of ``a`` and ``b`` alone (not their whole
    runs': a gigabyte at a million tensor rows), and of those the columns it uses, beside the runs' whole
    checkpoints table."""
    if not hasattr(tables, "narrow"):
        return compare_checkpoints(tables, a, b)
    two = tables.narrow(checkpoints=[a, b], columns=_COMPARE_COLUMNS)
    return compare_checkpoints(SimpleNamespace(tensors=two.tensors, updates=two.updates,
                                               checkpoints=tables.checkpoints), a, b)


def exact_diff(tables, root: str, a: str, b: str, trust: bool) -> dict:
    """``ckptboard diff``'s JSON for two checkpoints under ``root`` (memoised per cache fingerprint: a file that
    changes changes the fingerprint)."""
    from ckptboard.core.diff import diff_checkpoints

    return diff_checkpoints(Path(root) / a, Path(root) / b, trust=trust).to_json()


def _exact(ctx: ViewContext, a: str, b: str) -> None:
    st.subheader("Exact difference")
    if not st.toggle("Read both files and diff every tensor (keys aligned across prefixes and renames, as "
                     "ckptboard diff does)", key="compare_exact", persist_state="session"):
        return
    try:
        data = memo(exact_diff, ctx, str(ctx.config.root), a, b, ctx.config.trust)
    except CkptboardError as e:
        st.error(f"{type(e).__name__}: {e}")
        return
    s = data["summary"]
    cols = st.columns(4)
    cols[0].metric("Matched", s["matched"], help=f"exact {s['exact']}, prefix {s['prefix']}, shape {s['shape']}")
    cols[1].metric("‖B−A‖/‖A‖ (parameters)", "nan" if s["rel_change"] is None else f"{s['rel_change']:.4g}")
    cols[2].metric("Sign flips", f"{s['sign_flips']:,}")
    cols[3].metric("Only in A / B", f"{s['only_a']} / {s['only_b']}")
    frame = diff_frame(data)
    st.dataframe(frame, hide_index=True, key="compare_exact_table")
    if frame.empty:
        return
    by_name = {t["a"]: t for t in data["tensors"]}
    pick_default("compare_exact_tensor", list(frame["a"]), frame["a"].iloc[0])
    name = st.selectbox("Histogram of B − A for", list(frame["a"]), key="compare_exact_tensor",
                        persist_state="session")
    st.plotly_chart(diff_histogram_figure(by_name[name]), key="compare_exact_hist")


def _two_checkpoints(ctx: ViewContext) -> tuple[str, str]:
    left, right = st.columns(2)
    with left:
        a = checkpoint_picker(ctx, "compare_a", "From", index=0)
    with right:
        b = checkpoint_picker(ctx, "compare_b", "To", index=-1)
    return a, b


def _two_runs(ctx: ViewContext) -> tuple[str, str]:
    if len(ctx.runs) < 2:
        st.info("Choose at least two runs in the sidebar to compare runs.")
        st.stop()
    cols = st.columns(3)
    with cols[0]:
        run_a = run_picker(ctx, "compare_run_a", "Run A")
    with cols[1]:
        pick_default("compare_run_b", ctx.runs, next(r for r in ctx.runs if r != run_a))
        run_b = st.selectbox("Run B", ctx.runs, key="compare_run_b", persist_state="session")
    frame = ctx.tables.checkpoints
    steps_a, steps_b = (_finite_steps(frame[frame["run"] == r]) for r in (run_a, run_b))
    common = sorted(set(steps_a.tolist()) & set(steps_b.tolist()))
    if not common:
        st.info(f"Runs {run_a!r} and {run_b!r} share no step; compare two checkpoints instead.")
        st.stop()
    with cols[2]:
        pick_default("compare_step", common, common[-1])
        step = st.selectbox("Step", common, key="compare_step", persist_state="session")
    return _at_step(frame, run_a, step), _at_step(frame, run_b, step)


def _at_step(frame: pd.DataFrame, run: str, step: int) -> str:
    rows = frame[(frame["run"] == run) & (pd.to_numeric(frame["step"], errors="coerce") == step)]
    return str(rows.sort_values("checkpoint")["checkpoint"].iloc[-1])


def _lists(result) -> None:
    if result.added or result.removed or result.reshaped:
        with st.expander("Tensors added, removed or reshaped", expanded=False):
            rows = [{"tensor": n, "change": "added", "detail": ""} for n in result.added]
            rows += [{"tensor": n, "change": "removed", "detail": ""} for n in result.removed]
            rows += [{"tensor": n, "change": "reshaped", "detail": f"{sa} → {sb}"} for n, sa, sb in result.reshaped]
            st.dataframe(pd.DataFrame(rows), hide_index=True, key="compare_events")


def _finite_steps(frame: pd.DataFrame) -> np.ndarray:
    """Sorted unique finite steps of ``frame``."""
    steps = pd.to_numeric(frame["step"], errors="coerce").dropna().unique()
    return np.sort(steps.astype(np.int64))
