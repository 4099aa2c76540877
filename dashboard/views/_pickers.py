"""Pickers several views share: a checkpoint, a run, a tensor of a run. Each keeps its choice for the session.

A tensor picker answers at any size: it offers at most :data:`OFFERED` tensors (the chosen ones, then the largest
that match the sidebar filter and the picker's own search box), because Streamlit builds, sends and draws every
option on every rerun (20,000 options cost seconds in the browser). Any tensor is reached by typing in the search.
The options come from one narrow read per cache state and sidebar selection (:func:`picker_index`: six columns
grouped in Arrow, memoised); the defaults from it and the first updates of each run (:func:`worth_seeing`), computed
once for every session.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import streamlit as st

from ckptboard.core.schema import StatsTables, TableName
from ckptboard.dashboard.state import ViewContext, memo, pick_default

__all__ = [
    "OFFERED",
    "TensorChoices",
    "checkpoint_picker",
    "largest_parameters",
    "moved_tensors",
    "offered",
    "picker_index",
    "run_picker",
    "search_pattern",
    "searched",
    "tensor_choices",
    "tensor_multiselect",
    "tensor_picker",
    "tensor_search",
    "worth_seeing",
]

OFFERED = 200  # the most tensors a picker offers at once (besides the chosen ones)

_INDEX_KEYS = ["run", "group", "name"]
_INDEX_READ = (*_INDEX_KEYS, "kind", "trainable", "numel")
_MOVED_READ = (*_INDEX_KEYS, "update_norm")


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
    (:func:`worth_seeing`); stops with a hint when there is none. Beside it, a search box (many tensors only)."""
    index = memo(picker_index, ctx)
    search = tensor_search(ctx, run, key, index)
    choices = _choices(ctx.key, run, ctx.pattern, search, index)
    if not choices.allowed:
        st.info(f"No tensor of run {run!r} matches the sidebar filter.")
        st.stop()
    pick_default(key, choices.allowed_set, lambda: _shared_default(
        (key, ctx.key, ctx.pattern, run), lambda: worth_seeing(ctx.tables, run, choices.allowed, index)))
    several_groups = choices.groups > 1
    return st.selectbox(
        label, offered(choices, [st.session_state[key]]), key=key, persist_state="session",
        format_func=lambda gn: f"{gn[0]} › {gn[1]}" if several_groups and gn[0] else gn[1],
    )  # fmt: skip


def tensor_multiselect(ctx: ViewContext, key: str, label: str, *, count: int, placeholder: str) -> list[str]:
    """Tensor names of the chosen runs matching the sidebar filter, largest first; the default is
    :func:`largest_parameters` (``count`` of them). Beside it, a search box (many tensors only)."""
    index = memo(picker_index, ctx)
    search = tensor_search(ctx, None, key, index)
    choices = _choices(ctx.key, None, ctx.pattern, search, index)
    pick_default(key, choices.allowed_set, lambda: list(_shared_default(
        (key, ctx.key, ctx.pattern, count), lambda: largest_parameters(ctx, index, choices.allowed_set, count))))
    return st.multiselect(label, offered(choices, st.session_state[key]), key=key, persist_state="session",
                          placeholder=placeholder)


def tensor_search(ctx: ViewContext, run: str | None, key: str, index: pd.DataFrame) -> str:
    """The picker ``key``'s search text: a search box shown only when the sidebar filter lets through more than
    :data:`OFFERED` tensors, with a caption saying how many the picker offers."""
    total = len(_choices(ctx.key, run, ctx.pattern, "", index).allowed)
    if total <= OFFERED:
        return ""
    search_key = f"{key}_search"
    search = st.text_input(
        "Search tensors", key=search_key, persist_state="session", placeholder="e.g. layers.12.*attn (regex)",
        help="A regular expression, case-insensitive (not a valid one: the text itself); the sidebar filter applies "
             "too. The picker lists the largest matches.",
    )  # fmt: skip
    found = len(_choices(ctx.key, run, ctx.pattern, search, index).found)
    what = f"{found:,} of {total:,} tensors match" if search else f"{total:,} tensors"
    if found > OFFERED:
        st.caption(f"{what}: showing the {OFFERED} largest; type in the search to narrow.")
    else:
        st.caption(f"{what}." if found else f"No tensor matches {search!r}; the chosen ones are kept.")
    return search


@dataclass(frozen=True)
class TensorChoices:
    """The tensors a picker may hold (``allowed``: what the sidebar filter lets through, largest first) and those
    its search finds (``found``, a subsequence of ``allowed``); keys are names, or ``(group, name)`` in a run
    (``groups``: how many groups, state_dicts, ``allowed`` spans)."""

    allowed: tuple
    allowed_set: frozenset
    found: tuple
    groups: int = 1


def offered(choices: TensorChoices, chosen: Sequence[Any], limit: int = OFFERED) -> list:
    """What a picker lists: the ``limit`` largest tensors the search found, then the chosen ones not among them."""
    options = list(choices.found[:limit])
    shown = set(options)
    return options + [c for c in chosen if c in choices.allowed_set and c not in shown]


def search_pattern(text: str) -> re.Pattern | None:
    """The search box's text as a case-insensitive regex (the text itself when it is not a valid one); None when
    empty."""
    if not text:
        return None
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error:
        return re.compile(re.escape(text), re.IGNORECASE)


def tensor_choices(index: pd.DataFrame, run: str | None, pattern: str | None, search: str = "") -> TensorChoices:
    """``run``'s ``(group, name)`` keys, or with ``run`` None the names of every run, largest first (ties by name),
    kept where the sidebar ``pattern`` finds the name; ``found`` those where the search finds it (or, for a key of a
    named group, ``group:name``)."""
    if run is None:
        sizes = index.groupby("name", sort=True)["numel"].max().sort_values(ascending=False, kind="stable")
        keys: list = sizes.index.tolist()
        names = keys
    else:
        rows = index[index["run"] == run].sort_values(["numel", "group", "name"], ascending=[False, True, True],
                                                      kind="stable")
        keys = list(zip(rows["group"].tolist(), rows["name"].tolist()))
        names = [n for _, n in keys]
    if pattern:
        regex = re.compile(pattern)
        keys = [k for k, n in zip(keys, names) if regex.search(n)]
    allowed = tuple(keys)
    groups = 1 if run is None else len({g for g, _ in keys})
    return searched(TensorChoices(allowed, frozenset(allowed), allowed, groups), search)


def searched(choices: TensorChoices, search: str) -> TensorChoices:
    """``choices`` with ``found`` narrowed to what ``search`` finds (the other fields shared, not copied)."""
    wanted = search_pattern(search)
    if wanted is None:
        return choices
    return replace(choices, found=tuple(k for k in choices.allowed if _found(wanted, k)))


def _found(regex: re.Pattern, key: str | tuple[str, str]) -> bool:
    if isinstance(key, str):
        return regex.search(key) is not None
    group, name = key
    return regex.search(name) is not None or (bool(group) and regex.search(f"{group}:{name}") is not None)


@st.cache_resource(show_spinner=False, max_entries=8)
def _allowed(key: tuple, run: str | None, pattern: str | None, _index: pd.DataFrame) -> TensorChoices:
    """:func:`tensor_choices` without a search, shared by reruns and sessions (keyed on the view context)."""
    return tensor_choices(_index, run, pattern)


@st.cache_resource(show_spinner=False, max_entries=16)
def _choices(key: tuple, run: str | None, pattern: str | None, search: str, _index: pd.DataFrame) -> TensorChoices:
    """:func:`tensor_choices`: each search typed keeps only what it found (a few MB for 20,000 keys are shared)."""
    return searched(_allowed(key, run, pattern, _index), search)


@st.cache_resource(show_spinner=False, max_entries=32)
def _shared_default(key: tuple, _compute: Callable[[], Any]) -> Any:
    """A picker's default, computed once per view context, filter and picker (``key``) for every session."""
    return _compute()


def picker_index(tables: StatsTables) -> pd.DataFrame:
    """One row per ``(run, group, name)`` of the tensors table, each run's rows in the order first seen, with the
    largest ``numel`` seen: of any kind, as a parameter (``parameter_numel``), as a parameter not known to be frozen
    (``trainable_numel``); null where never. Six columns read, grouped in Arrow."""
    rows = _read(tables, TableName.TENSORS, _INDEX_READ)
    numel = rows.column("numel")
    parameter = pc.fill_null(pc.equal(rows.column("kind"), "parameter"), False)
    not_frozen = pc.fill_null(pc.not_equal(rows.column("trainable"), "false"), True)
    none = pa.scalar(None, numel.type)
    narrow = pa.table({
        **{k: rows.column(k) for k in _INDEX_KEYS}, "numel": numel,
        "parameter_numel": pc.if_else(parameter, numel, none),
        "trainable_numel": pc.if_else(pc.and_(parameter, not_frozen), numel, none),
    })  # fmt: skip
    sizes = ["numel", "parameter_numel", "trainable_numel"]
    grouped = narrow.group_by(_INDEX_KEYS, use_threads=False).aggregate([(c, "max") for c in sizes])  # first-seen
    frame = grouped.rename_columns([f"{c}_max" if c in sizes else c for c in grouped.column_names])
    frame = frame.select([*_INDEX_KEYS, *(f"{c}_max" for c in sizes)]).rename_columns([*_INDEX_KEYS, *sizes])
    # Rows were read in file order: a stable sort by run gives each run's keys in the order its rows first show them.
    frame = frame.to_pandas().sort_values("run", kind="stable").reset_index(drop=True)
    return frame.astype({k: object for k in _INDEX_KEYS})  # Python strings: pickers test and iterate them


def moved_tensors(tables: StatsTables, run: str, checkpoints: Sequence[str] | None = None
                  ) -> frozenset[tuple[str, str]]:
    """The ``(group, name)`` keys of ``run`` with an update norm above zero (NaN is not) into some checkpoint (of
    ``checkpoints`` only, when given)."""
    rows = _read(tables, TableName.UPDATES, _MOVED_READ, run=run, checkpoints=checkpoints)
    most = rows.group_by(["group", "name"], use_threads=False).aggregate([("update_norm", "max")])
    moved = most.filter(pc.fill_null(pc.greater(most.column("update_norm_max"), 0.0), False))
    return frozenset(zip(moved.column("group").to_pylist(), moved.column("name").to_pylist()))


def _read(tables: Any, table: TableName, columns: Sequence[str], run: str | None = None,
          checkpoints: Sequence[str] | None = None) -> pa.Table:
    """``columns`` of ``table``'s rows (of ``run`` and ``checkpoints`` only, when given) in file order: pushed down
    to the dataset for the app's lazy views, taken from the frames of whole tables."""
    if hasattr(tables, "dataset"):
        selection = tables.selection if run is None else tables.selection.narrow(runs=[run])
        selection = selection if checkpoints is None else selection.narrow(checkpoints=list(checkpoints))
        return tables.dataset.read(table, selection, columns=list(columns), sort=False)
    frame = getattr(tables, str(table))
    keep = pd.Series(True, index=frame.index)
    if run is not None:
        keep &= frame["run"] == run
    if checkpoints is not None:
        keep &= frame["checkpoint"].isin(list(checkpoints))
    return pa.Table.from_pandas(frame.loc[keep, list(columns)], preserve_index=False)


def worth_seeing(tables: StatsTables, run: str, options: Sequence[tuple[str, str]],
                 index: pd.DataFrame | None = None) -> tuple[str, str]:
    """The tensor a first look should show: the largest trainable parameter that changes over the run (not a
    16-value BatchNorm bias, a frozen stem or a constant LayerNorm); else the largest parameter; else the first.
    ``index`` is ``tables``' :func:`picker_index` when the caller holds it."""
    index = picker_index(tables) if index is None else index
    rows = index[(index["run"] == run) & index["trainable_numel"].notna()]
    rows = rows.sort_values(["trainable_numel", "group", "name"], ascending=[False, True, True], kind="stable")
    wanted = set(options)
    ranked = [k for k in zip(rows["group"].tolist(), rows["name"].tolist()) if k in wanted]  # ties by (group, name)
    if not ranked:
        return options[0]
    return _first_moving(tables, run, ranked) or ranked[0]


def _first_moving(tables: Any, run: str, ranked: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The first of ``ranked`` that :func:`moved_tensors` holds. The run's updates are read a few checkpoints at a
    time (2, 8, 32, ... by step), stopping once the first of ``ranked`` is seen to move: usually in the first
    update, where reading them all took 0.15 s at 50 × 20,000 tensors."""
    frame = tables.checkpoints
    steps = frame.loc[frame["run"] == run].sort_values(["step", "checkpoint"], na_position="first")
    checkpoints = steps["checkpoint"].tolist()
    moved: set[tuple[str, str]] = set()
    start, batch = 0, 2  # the first checkpoint has no update: two make one
    while start < len(checkpoints):
        moved |= moved_tensors(tables, run, checkpoints[start : start + batch])
        if ranked[0] in moved:
            return ranked[0]
        start, batch = start + batch, batch * 4
    return next((k for k in ranked if k in moved), None)


def largest_parameters(ctx: ViewContext, index: pd.DataFrame, allowed: frozenset[str], count: int) -> list[str]:
    """The first lines a user sees: each run's tensor worth seeing (so that every run draws a line), then the
    largest parameters (buffers such as step counters would dwarf them), ``count`` in all when runs allow."""
    chosen: list[str] = []
    for run in ctx.runs:
        rows = index[index["run"] == run]
        keys = zip(rows["group"].tolist(), rows["name"].tolist())
        offered_keys = [(g, n) for g, n in keys if n in allowed]  # in the order first seen
        if offered_keys:
            name = worth_seeing(ctx.tables, run, offered_keys, index)[1]
            if name not in chosen:
                chosen.append(name)
    params = index[index["parameter_numel"].notna() & index["name"].isin(allowed)]
    largest = params.groupby("name")["parameter_numel"].max().sort_values(ascending=False, kind="stable")
    for name in largest.index:
        if len(chosen) >= count:
            break
        if name not in chosen:
            chosen.append(name)
    return chosen
