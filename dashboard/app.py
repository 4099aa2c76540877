"""The ckptboard dashboard (Streamlit): ``ckptboard serve ROOT`` or ``streamlit run dashboard/app.py -- ROOT``.

Reads the stats cache of ROOT (summarizing what is missing, with progress), draws the sidebar, then one view.
"""

from __future__ import annotations

import streamlit as st

from ckptboard.dashboard import sidebar, state
from ckptboard.dashboard.views import VIEW_KEY, View, render

st.set_page_config(page_title="ckptboard", page_icon=":bar_chart:", layout="wide")

config = state.app_config()
# The switcher first: it needs no data, so the page shows something while the cache is read.
st.session_state.setdefault(VIEW_KEY, View.OVERVIEW)  # not default=: Health's links set this key too
view = st.segmented_control(
    "View", list(View), key=VIEW_KEY, required=True,
    label_visibility="collapsed", bind="query-params", width="stretch",
)  # fmt: skip
tables, fingerprint = state.load_tables(config)
ctx = sidebar.sidebar(config, tables, fingerprint)
try:
    if not ctx.all_runs:
        st.info(f"No checkpoints under `{config.root}` yet. Checkpoints a training run writes there show up after "
                "**Refresh** (or with auto-refresh) in the sidebar.")
        st.stop()
    if not ctx.runs:
        st.info("Choose at least one run in the sidebar.")
        st.stop()
    render(View(view or View.OVERVIEW), ctx)
finally:  # also after a view's st.stop(): the page is drawn, now look for checkpoints written since
    state.give_back_freed_memory()
    state.look_for_new_checkpoints(config)
