"""Health: non-finite values, unchanged parameters, dead BN channels, exploding norms, largest update ratios.

Each finding leads to its tensor's charts: choosing it and pressing a button sets the other views' pickers and
switches to that view.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ckptboard.core.health import health_table
from ckptboard.dashboard.figures.batchnorm import BatchNormStat
from ckptboard.dashboard.state import ViewContext, memo, pick_default
from ckptboard.dashboard.views import VIEW_KEY, LinesPer, View

__all__ = ["SHOWN_FINDINGS", "render", "open_finding"]

# The statistic a finding is best seen in, by check; unknown checks fall back to the norm.
_STAT_FOR_CHECK = {
    "non-finite": "nans",
    "unchanged-across-run": "update_norm",
    "exploding-norm": "norm",
    "largest-update-ratio": "update_ratio",
    "dead-bn-channel": "min",
}


# Findings sent to the browser (table and picker), most severe first: a low threshold over a large series can find
# tens of thousands, which would cost seconds to send and draw.
SHOWN_FINDINGS = 1_000

# What a reader scans first; the long checkpoint path last.
_COLUMN_ORDER = ("severity", "check", "run", "step", "name", "value", "detail", "group", "checkpoint")


# What the checks read: of the tensors table identity, norms and non-finite counts (a third of its columns); of the
# updates table all but the previous checkpoint's path, the cosine and the distances from the first checkpoint; of
# the batchnorm table all but running_mean.
_HEALTH_COLUMNS = (
    "run", "checkpoint", "step", "group", "name", "module", "kind", "trainable", "numel", "norm", "nans", "posinfs",
    "neginfs", "prev_step", "update_norm", "update_ratio", "channel", "running_var",
)

def render(ctx: ViewContext) -> None:
    left, right, _ = st.columns([2, 2, 3])
    with left:
        dead_var = st.number_input(
            "Dead channel: running var below", min_value=0.0, value=1e-8, format="%.1e", key="health_dead_var",
            persist_state="session",
        )  # fmt: skip
    with right:
        explode = st.number_input(
            "Exploding: norm grows more than ×", min_value=1.0, value=10.0, key="health_explode",
            persist_state="session",
        )  # fmt: skip
    found = memo(health_table, ctx.narrow(columns=_HEALTH_COLUMNS), dead_var=dead_var, explode_factor=explode)
    if found.empty:
        st.success("No findings: every tensor is finite, changes, and no norm explodes.")
        st.stop()
    table = found.head(SHOWN_FINDINGS)  # most severe first
    if len(found) > len(table):
        st.caption(f"Listing the first {len(table):,} of {len(found):,} findings (errors, then warnings, then info; by "
                   f"check, run and value): raise the thresholds or choose fewer runs to list the other "
                   f"{len(found) - len(table):,}.")
    labels = _labels(table)
    findings = list(range(len(table)))
    selected = st.dataframe(
        table, hide_index=True, key="health_table", height=360, on_select="rerun", selection_mode="single-row",
        column_order=_COLUMN_ORDER,
    )  # fmt: skip
    rows = list(getattr(getattr(selected, "selection", None), "rows", []) or [])
    if rows and rows != st.session_state.get("_health_rows"):  # a click on a row picks that finding
        st.session_state["health_finding"] = rows[0]
    st.session_state["_health_rows"] = rows
    pick_default("health_finding", findings, 0)
    choice = st.selectbox(
        "Open a finding (or click its row)", findings, key="health_finding",
        format_func=labels.__getitem__,
    )  # fmt: skip
    row = table.iloc[choice].to_dict()
    targets = [(View.SCALARS, ":material/show_chart:"), (View.HISTOGRAMS, ":material/bar_chart:")]
    if row["check"] == "dead-bn-channel":
        targets.append((View.BATCHNORM, ":material/stacked_line_chart:"))
    for col, (view, icon) in zip(st.columns(3), targets):
        col.button(str(view), key=f"health_open_{view.name.lower()}", on_click=open_finding, args=(row, view),
                   icon=icon, width="stretch")


def _labels(table: pd.DataFrame) -> list[str]:
    """Each finding's label in the picker, built once per rerun (not by a row lookup per option)."""
    steps = ["" if pd.isna(s) else f" @ step {int(s)}" for s in table["step"]]
    return [f"{severity} · {check} · {run} · {name}{step}" for severity, check, run, name, step
            in zip(table["severity"], table["check"], table["run"], table["name"], steps)]


def open_finding(row: dict, view: View) -> None:
    """Callback: point the target view's pickers at the finding's tensor and switch to it."""
    state = st.session_state
    run, name = row["run"], row["name"]
    group = row["group"] if isinstance(row["group"], str) else ""
    if row["check"] == "dead-bn-channel":  # the finding names the layer; its tensor is the running variance
        layer, name = name, f"{name}.running_var"
    else:
        layer = name.rpartition(".")[0]
    if run not in state.get("sidebar_runs", [run]):
        state["sidebar_runs"] = [*state["sidebar_runs"], run]
    state["sidebar_filter"] = ""  # the tensor must be visible in the pickers
    if view == View.SCALARS:
        state["scalars_by"] = LinesPer.TENSORS
        state["scalars_tensors"] = [name]
        state["scalars_stat"] = _STAT_FOR_CHECK.get(row["check"], "norm")
    elif view == View.HISTOGRAMS:
        state["hist_run"] = run
        state["hist_tensor"] = (group, name)
    elif view == View.BATCHNORM:
        state["bn_run"] = run
        state["bn_layer"] = layer
        state["bn_stat"] = BatchNormStat.RUNNING_VAR
    state[VIEW_KEY] = view
