"""Overview: runs, their checkpoints (step, where it came from, format, size, counts), metadata and error cards."""

from __future__ import annotations

import json

import streamlit as st

from ckptboard.core.health import error_cards
from ckptboard.dashboard.figures.overview import checkpoints_table, runs_overview_figure
from ckptboard.dashboard.state import ViewContext, aliases, memo, pick_default, skipped_files

__all__ = ["render"]

_ALL = "All runs"
# The table's columns on screen, labelled and sized to fit 1440 px with the sidebar open (~970 px): the file within
# its run (the run has its own column), no byte split or optimizer line (Size & FLOPs, the metadata below and the
# export have them).
_COLUMNS = {
    "run": st.column_config.TextColumn("run", width=115),
    "file": st.column_config.TextColumn("file", width=170, help="the checkpoint's path within its run"),
    "step": st.column_config.NumberColumn("step", width=55),
    "step_source": st.column_config.TextColumn("step from", width=145, help="where the step number was read"),
    "format": st.column_config.TextColumn("format", width=85),
    "size": st.column_config.TextColumn("size", width=75, help="the file's size on disk"),
    "n_tensors": st.column_config.NumberColumn("tensors", width=62),
    "n_parameters": st.column_config.NumberColumn("params", width=62, help="parameter tensors"),
    "n_trainable": st.column_config.NumberColumn("trainable", width=70, help="parameter tensors that train"),
    "n_frozen": st.column_config.NumberColumn("frozen", width=58, help="parameter tensors that do not train"),
    "n_buffers": st.column_config.NumberColumn("buffers", width=62, help="buffer tensors (BatchNorm statistics, …)"),
}


def render(ctx: ViewContext) -> None:
    cards = memo(error_cards, ctx)
    # Material icons, not emoji: Streamlit checks an emoji icon against a regex of every emoji, compiled on first
    # use (0.2-0.4 s of a fresh server's first page).
    for card in cards:
        st.error(f"**{card['checkpoint']}** could not be read — {card['error']}: {_problem(card)}",
                 icon=":material/warning:")
    skipped = skipped_files(ctx.config)
    if skipped:
        shown = ", ".join(f"`{p}`" for p in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        st.info(f"{len(skipped)} file(s) still being written, read on the next refresh: {shown}",
                icon=":material/hourglass_top:")
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
    st.plotly_chart(memo(_runs_figure, ctx), key="overview_runs_chart")

    runs = [_ALL, *ctx.runs]
    pick_default("overview_run", runs, _ALL)
    run = st.selectbox("Checkpoints of", runs, key="overview_run", persist_state="session")
    table = memo(checkpoints_table, ctx, None if run == _ALL else run)
    st.dataframe(_on_screen(table), hide_index=True, key="overview_checkpoints", column_config=_COLUMNS,
                 column_order=[c for c in _COLUMNS if run == _ALL or c != "run"])

    names = ctx.checkpoints(None if run == _ALL else run)
    if names:
        pick_default("overview_checkpoint", names, names[-1])
        chosen = st.selectbox(
            "Metadata of", names, key="overview_checkpoint", format_func=ctx.checkpoint_label, persist_state="session"
        )
        _metadata(ctx, chosen)


def _runs_figure(tables):
    """The runs chart, its parameter counts summed in the query, not from every tensor's row."""
    if not hasattr(tables, "dataset"):
        return runs_overview_figure(tables)
    return runs_overview_figure(tables, tables.dataset.parameter_elements(tables.selection))


def _on_screen(table):
    """The checkpoints table with ``file``: each checkpoint's path within its run (the run is its own column)."""
    prefixes = table["run"].astype(str).where(table["run"] != ".", "") + "/"
    files = [c[len(p):] if c.startswith(p) else c for c, p in zip(table["checkpoint"], prefixes)]
    return table.assign(file=files)


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
