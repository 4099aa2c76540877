"""The sidebar: runs, the tensor/module filter, grouping depth, step range, Refresh and auto-refresh.

It draws widgets only; what they choose becomes a :class:`~ckptboard.dashboard.state.ViewContext` in
:mod:`ckptboard.dashboard.state`, which also does the reading they ask for.
"""

from __future__ import annotations

import re
import time

import pandas as pd
import streamlit as st

from ckptboard.core.schema import StatsTables
from ckptboard.dashboard.config import AppConfig
from ckptboard.dashboard.state import (
    ViewContext,
    loaded_at,
    pick_default,
    refresh_if_due,
    request_refresh,
    distinct_modules,
    view_context,
)

__all__ = ["AUTO_REFRESH_CHOICES", "sidebar"]

AUTO_REFRESH_CHOICES: dict[str, int | None] = {"off": None, "10 s": 10, "30 s": 30, "1 min": 60, "5 min": 300}

# Streamlit cuts a chosen option's chip at a fixed width (three runs read "checkpoints/check…"): run names wrap in
# the sidebar instead, so every chip can be read whole.
_CHIP_CSS = """<style>
section[data-testid="stSidebar"] .stMultiSelect [role="group"],
section[data-testid="stSidebar"] [data-testid="stMultiSelectTagsContainer"] { max-height: none !important; }
section[data-testid="stSidebar"] [data-testid="stMultiSelectTagsContainer"] [data-tag] {
  height: auto !important; max-width: 100% !important;
}
section[data-testid="stSidebar"] [data-testid="stMultiSelectTagsContainer"] [data-tag] > span[title] {
  white-space: normal !important; overflow-wrap: anywhere; text-overflow: clip !important;
  width: auto !important; max-width: none !important; line-height: 1.3;
}
</style>"""


def _valid_regex(text: str) -> str | None:
    if not text:
        return None
    try:
        re.compile(text)
    except re.error as e:
        st.sidebar.error(f"Filter {text!r} is not a regular expression: {e}")
        return None
    return text


def _step_bounds(tables: StatsTables) -> tuple[int, int] | None:
    steps = pd.to_numeric(tables.checkpoints["step"], errors="coerce").dropna()
    if steps.empty or steps.min() == steps.max():
        return None
    return int(steps.min()), int(steps.max())


def _max_depth(tables: StatsTables, fingerprint: str) -> int:
    modules = distinct_modules(tables, fingerprint)
    return int(max((m.count(".") + 1 for m in modules if m), default=1))


def _reload_panel(config: AppConfig) -> None:
    """Refresh button, auto-refresh interval and when the cache was last read."""
    st.button("Refresh", key="refresh", on_click=request_refresh, help="read checkpoints written since", width="stretch")
    choice = st.selectbox("Auto-refresh", list(AUTO_REFRESH_CHOICES), key="auto_refresh", persist_state="session")
    loaded = time.strftime("%H:%M:%S", time.localtime(loaded_at()))
    st.caption(f"ROOT `{config.root}` · read at {loaded}")
    seconds = AUTO_REFRESH_CHOICES.get(choice)
    if seconds:
        _auto_refresh(config, seconds)


def _auto_refresh(config: AppConfig, seconds: int) -> None:
    @st.fragment(run_every=seconds)
    def _tick() -> None:
        refresh_if_due(config, seconds)

    _tick()


def sidebar(config: AppConfig, tables: StatsTables, fingerprint: str) -> ViewContext:
    """Draw the sidebar (runs, filter, depth, step range, reload) and return the context the views draw from."""
    all_runs = sorted(set(tables.checkpoints["run"]) | set(tables.errors["run"]))
    with st.sidebar:
        st.html(_CHIP_CSS)
        st.title("ckptboard")
        pick_default("sidebar_runs", all_runs, all_runs)
        runs = st.multiselect("Runs", all_runs, key="sidebar_runs", placeholder="choose runs")
        pattern = _valid_regex(
            st.text_input("Tensor/module filter (regex)", key="sidebar_filter", placeholder=r"e.g. conv|bn\d")
        )
        depth_max = max(2, _max_depth(tables, fingerprint))  # a slider needs two values; depth 2 of a flat model is depth 1
        pick_default("sidebar_depth", range(1, depth_max + 1), 2)
        depth = st.slider("Module depth for grouping", 1, depth_max, key="sidebar_depth")
        step_range = None
        bounds = _step_bounds(tables)
        if bounds is not None:
            current = st.session_state.get("sidebar_step_range")
            was_full = current is not None and tuple(current) == st.session_state.get("_step_bounds")
            valid = current is not None and bounds[0] <= current[0] <= current[1] <= bounds[1]
            if was_full or not valid:  # a full range grows with the run, like TensorBoard's axes
                st.session_state["sidebar_step_range"] = bounds
            st.session_state["_step_bounds"] = bounds
            chosen = st.slider("Step range", bounds[0], bounds[1], key="sidebar_step_range")
            step_range = None if tuple(chosen) == bounds else (int(chosen[0]), int(chosen[1]))
        st.divider()
        _reload_panel(config)
    return view_context(config, tables, fingerprint, runs=runs, pattern=pattern, depth=depth, step_range=step_range,
                        all_runs=all_runs)
