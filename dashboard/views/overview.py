"""Overview: runs, their checkpoints (step, where it came from, format, size, counts), metadata and error cards."""

from __future__ import annotations

import json

import streamlit as st

from ckptboard.core.health import error_cards
from ckptboard.dashboard.figures.overview import checkpoints_table, runs_overview_figure
from ckptboard.dashboard.state import ViewContext, aliases, memo, pick_default, skipped_files

__all__ = ["render"]

_ALL = "All runs"


def render(ctx: ViewContext) -> None:
    cards = memo(error_cards, ctx)
    for card in cards:
        st.error(f"**{card['checkpoint']}** could not be read — {card['error']}: {_problem(card)}", icon="⚠️")
    skipped = skipped_files(ctx.config)
    if skipped:
        shown = ", ".join(f"`{p}`" for p in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        st.info(f"{len(skipped)} file(s) still being written, read on the next refresh: {shown}", icon="⏳")
    copies = aliases(ctx.config)
    if copies:
        shown = ", ".join(f"`{a}` = `{o}`" for a, o in list(copies.items())[:5])
        st.caption(f"Shown once: {shown}{' …' if len(copies) > 5 else ''} (same step, same tensor bytes)")
    checkpoints = ctx.tables.checkpoints
    if checkpoints.empty:
        st.info("No readable checkpoints in the chosen runs and step range. Checkpoints the run writes later show "
                "up after **Refresh** in the sidebar.")
        st.stop()
    cols = st.columns(4)
    cols[0].metric("Runs", len(ctx.runs))
    cols[1].metric("Checkpoints", len(checkpoints))
    cols[2].metric("Unreadable files", len(cards))
    cols[3].metric("Tensors per checkpoint (max)", int(checkpoints["n_tensors"].max()))
    st.plotly_chart(memo(runs_overview_figure, ctx), key="overview_runs_chart")

    runs = [_ALL, *ctx.runs]
    pick_default("overview_run", runs, _ALL)
    run = st.selectbox("Checkpoints of", runs, key="overview_run", persist_state="session")
    table = memo(checkpoints_table, ctx, None if run == _ALL else run)
    st.dataframe(table, hide_index=True, key="overview_checkpoints")

    names = ctx.checkpoints(None if run == _ALL else run)
    if names:
        pick_default("overview_checkpoint", names, names[-1])
        chosen = st.selectbox(
            "Metadata of", names, key="overview_checkpoint", format_func=ctx.checkpoint_label, persist_state="session"
        )
        _metadata(ctx, chosen)


def _problem(card: dict) -> str:
    """The error message without its leading path: the card already names the file."""
    message = str(card["message"])
    head, sep, tail = message.partition(": ")
    return tail if sep and head.endswith(str(card["checkpoint"])) else message


def _metadata(ctx: ViewContext, checkpoint: str) -> None:
    row = ctx.tables.checkpoints[ctx.tables.checkpoints["checkpoint"] == checkpoint].iloc[0]
    text = row.get("metadata_json")
    try:
        metadata = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        metadata = {"metadata_json": text}
    if row.get("optimizer"):
        metadata = {"optimizer": row["optimizer"], **metadata}
    if row.get("skipped_globals"):
        metadata = {"skipped_globals": row["skipped_globals"], **metadata}
    if metadata:
        st.json(metadata, expanded=1)
    else:
        st.caption("This checkpoint holds tensors only: no metadata.")
