"""The app's state: its config, loading the stats cache (with progress), the sidebar filters and the view context.

Tables are held with ``st.cache_resource`` keyed on the cache's fingerprint, so every rerun of every session shares
one read-only copy and a refresh that finds new checkpoints gets a new key. Derived figures and frames go through
:func:`memo`, keyed on the same fingerprint plus the sidebar filters.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from ckptboard.core.cache import CacheWarning, StatsCache
from ckptboard.core.errors import CkptboardError, UsageError
from ckptboard.core.schema import StatsTables
from ckptboard.dashboard.commands.serve import AppConfig, parse_app_args

__all__ = [
    "ARGV_KEY",
    "SKIPPED_KEY",
    "ViewContext",
    "app_config",
    "load_tables",
    "filter_tables",
    "sidebar",
    "memo",
    "pick_default",
]

ARGV_KEY = "app_argv"  # session_state key tests set to pass the app its argv (AppTest keeps pytest's sys.argv)
SKIPPED_KEY = "skipped_incomplete"  # files summarize skipped as still being written, for the Overview
_FINGERPRINT_KEY = "cache_fingerprint"
_REFRESH_KEY = "refresh_requested"
_LOADED_AT_KEY = "loaded_at"
AUTO_REFRESH_CHOICES: dict[str, int | None] = {"off": None, "10 s": 10, "30 s": 30, "1 min": 60, "5 min": 300}


@dataclass
class ViewContext:
    """What every view's ``render(ctx)`` gets: the config, the filtered tables and the sidebar's choices."""

    config: AppConfig
    tables: StatsTables  # restricted to the chosen runs and step range
    fingerprint: str
    runs: list[str]
    pattern: str | None = None  # tensor/module regex from the sidebar, already validated
    depth: int | None = None  # module depth for grouping
    step_range: tuple[int, int] | None = None
    all_runs: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        """Identity of what the views draw: the cache's fingerprint plus the sidebar filters."""
        return (self.fingerprint, tuple(self.runs), self.step_range)

    def tensor_names(self, run: str | None = None) -> list[str]:
        """Sorted display names of the tensors (of ``run`` or every chosen run) matching the sidebar filter."""
        frame = self.tables.tensors
        if run is not None:
            frame = frame[frame["run"] == run]
        names = pd.Index(frame["name"].unique()).sort_values()
        if self.pattern:
            names = names[names.str.contains(self.pattern, regex=True)]
        return names.tolist()

    def modules(self) -> list[str]:
        """Module paths cut to the sidebar depth (``""`` is the root module), sorted."""
        modules = pd.Series(self.tables.tensors["module"].unique(), dtype=object).fillna("")
        if self.depth:
            modules = modules.map(lambda m: ".".join(m.split(".")[: self.depth]))
        if self.pattern:
            modules = modules[modules.str.contains(self.pattern, regex=True)]
        return sorted(set(modules) - {""})

    def checkpoints(self, run: str | None = None) -> list[str]:
        """Checkpoint paths (relative to ROOT) of ``run`` or every chosen run, by run then step."""
        frame = self.tables.checkpoints
        if run is not None:
            frame = frame[frame["run"] == run]
        return frame.sort_values(["run", "step", "checkpoint"], na_position="first")["checkpoint"].tolist()

    def checkpoint_label(self, checkpoint: str) -> str:
        """``run · step N · file`` for pickers."""
        rows = self.tables.checkpoints[self.tables.checkpoints["checkpoint"] == checkpoint]
        if rows.empty:
            return checkpoint
        row = rows.iloc[0]
        step = "no step" if pd.isna(row["step"]) else f"step {int(row['step'])}"
        return f"{row['run']} · {step} · {checkpoint.rsplit('/', 1)[-1]}"


def app_config() -> AppConfig:
    """The config from the app's argv (``streamlit run app.py -- ROOT ...``); a usage error stops the page."""
    if "app_config" not in st.session_state:
        argv = st.session_state.get(ARGV_KEY, sys.argv[1:])
        try:
            st.session_state["app_config"] = parse_app_args(list(argv))
        except UsageError as e:
            st.error(f"{type(e).__name__}: {e}")
            st.info("Start the dashboard with `ckptboard serve ROOT` or `streamlit run dashboard/app.py -- ROOT`.")
            st.stop()
    return st.session_state["app_config"]


@st.cache_resource(show_spinner=False)
def _summarize_lock(root: str) -> threading.Lock:
    """One lock per ROOT in this server: two sessions never summarize the same cache at once."""
    return threading.Lock()


def _summarize_missing(config: AppConfig) -> None:
    """Read the checkpoints the cache does not hold yet, with a status box and a progress bar while it works."""
    from ckptboard.core.summarize import execute, plan

    with _summarize_lock(str(config.root)), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        work = plan(config.root, cache_dir=config.cache_dir, model=config.model, trust=config.trust)
        total = len(work.tasks)
        if not total:
            report = execute(work)  # nothing to read; prunes fragments of deleted checkpoints
        else:
            with st.status(f"Reading {total} new checkpoint(s)…", expanded=True) as status:
                bar = st.progress(0.0, text=f"0/{total}")
                done = 0

                def progress(receipt) -> None:
                    nonlocal done
                    done += 1
                    bar.progress(done / total, text=f"{done}/{total} · {receipt.relpath}")

                report = execute(work, progress=progress)
                status.update(label=f"Read {report.computed} new checkpoint(s): {report.line()}", state="complete",
                              expanded=False)
    st.session_state[SKIPPED_KEY] = list(report.skipped_incomplete)
    for warning in caught:
        if issubclass(warning.category, CacheWarning):
            st.warning(str(warning.message))


def _fingerprint(config: AppConfig) -> str:
    """Identity of the cache's content (every fragment's name, size and mtime): changes when any is written."""
    digest = hashlib.sha1()
    for path in StatsCache(config.root, config.cache_dir).fragments():
        try:
            info = path.stat()
        except OSError:  # pruned meanwhile
            continue
        digest.update(f"{path.name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@st.cache_resource(show_spinner=False, max_entries=4)
def _tables(root: str, cache_dir: str | None, fingerprint: str) -> StatsTables:
    """The tables of one cache state, shared read-only by every session (``fingerprint`` is the cache key)."""
    from ckptboard.core.tables import load_stats

    return load_stats(root, cache_dir=cache_dir)


def request_refresh() -> None:
    """Callback: summarize again on the next run (reads only checkpoints that are new since)."""
    st.session_state[_REFRESH_KEY] = True


def load_tables(config: AppConfig) -> tuple[StatsTables, str]:
    """Summarize what is missing (on open and on refresh only), then the cached tables and their fingerprint."""
    if _FINGERPRINT_KEY not in st.session_state or st.session_state.pop(_REFRESH_KEY, False):
        try:
            _summarize_missing(config)
        except CkptboardError as e:  # the cache itself is unusable: say so and show what is there
            st.error(f"{type(e).__name__}: {e}")
        st.session_state[_FINGERPRINT_KEY] = _fingerprint(config)
        st.session_state[_LOADED_AT_KEY] = time.time()
    fingerprint = st.session_state[_FINGERPRINT_KEY]
    cache_dir = str(config.cache_dir) if config.cache_dir else None
    return _tables(str(config.root), cache_dir, fingerprint), fingerprint


def filter_tables(tables: StatsTables, runs: Sequence[str], step_range: tuple[int, int] | None) -> StatsTables:
    """The rows of ``runs`` whose step lies in ``step_range`` (inclusive); errors are kept for the chosen runs."""
    out = {}
    for name, frame in vars(tables).items():
        keep = frame["run"].isin(list(runs))
        if step_range is not None and "step" in frame.columns:
            steps = pd.to_numeric(frame["step"], errors="coerce")
            keep &= steps.between(step_range[0], step_range[1])
        out[name] = frame if bool(keep.all()) else frame[keep]
    return StatsTables(**out)


@st.cache_resource(show_spinner=False, max_entries=16)
def _filtered(fingerprint: str, runs: tuple[str, ...], step_range: tuple[int, int] | None, _tables: StatsTables):
    return filter_tables(_tables, runs, step_range)


@st.cache_resource(show_spinner=False, max_entries=256)
def _memo(name: str, key: tuple, call_key: str, _thunk: Callable[[], Any]) -> Any:
    return _thunk()


def memo(fn: Callable[..., Any], ctx: ViewContext, *args: Any, **kwargs: Any) -> Any:
    """``fn(ctx.tables, *args, **kwargs)``, computed once per cache fingerprint, sidebar filters and arguments.

    The result is shared across reruns and sessions: callers must not modify it.
    """
    name = f"{fn.__module__}.{fn.__qualname__}"
    return _memo(name, ctx.key, repr((args, sorted(kwargs.items()))), lambda: fn(ctx.tables, *args, **kwargs))


def pick_default(key: str, options: Sequence[Any], default: Any) -> None:
    """Seed ``session_state[key]`` with ``default`` unless it already holds a value that is still an option."""
    current = st.session_state.get(key)
    if isinstance(current, list):
        kept = [v for v in current if v in options]
        if kept or not current:
            st.session_state[key] = kept
            return
    elif current is not None and current in options:
        return
    st.session_state[key] = default


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


def _max_depth(tables: StatsTables) -> int:
    modules = pd.Series(tables.tensors["module"].unique(), dtype=object).dropna()
    return int(max((m.count(".") + 1 for m in modules if m), default=1))


def _reload_panel(config: AppConfig) -> None:
    """Refresh button, auto-refresh interval and when the cache was last read."""
    st.button("Refresh", key="refresh", on_click=request_refresh, help="read checkpoints written since", width="stretch")
    choice = st.selectbox("Auto-refresh", list(AUTO_REFRESH_CHOICES), key="auto_refresh", persist_state="session")
    loaded = time.strftime("%H:%M:%S", time.localtime(st.session_state.get(_LOADED_AT_KEY, time.time())))
    st.caption(f"ROOT `{config.root}` · read at {loaded}")
    seconds = AUTO_REFRESH_CHOICES.get(choice)
    if seconds:
        _auto_refresh(config, seconds)


def _auto_refresh(config: AppConfig, seconds: int) -> None:
    @st.fragment(run_every=seconds)
    def _tick() -> None:
        # A full rerun also runs this body: summarize only when the interval has passed since the last read,
        # and rerun the whole page only when the cache really changed.
        if time.time() - st.session_state.get(_LOADED_AT_KEY, 0.0) < 0.9 * seconds:
            return
        _summarize_missing(config)
        st.session_state[_LOADED_AT_KEY] = time.time()
        fingerprint = _fingerprint(config)
        if fingerprint != st.session_state.get(_FINGERPRINT_KEY):
            st.session_state[_FINGERPRINT_KEY] = fingerprint
            st.rerun(scope="app")

    _tick()


def sidebar(config: AppConfig, tables: StatsTables, fingerprint: str) -> ViewContext:
    """Draw the sidebar (runs, filter, depth, step range, reload) and return the context the views draw from."""
    all_runs = sorted(set(tables.checkpoints["run"]) | set(tables.errors["run"]))
    with st.sidebar:
        st.title("ckptboard")
        pick_default("sidebar_runs", all_runs, all_runs)
        runs = st.multiselect("Runs", all_runs, key="sidebar_runs", placeholder="choose runs")
        pattern = _valid_regex(
            st.text_input("Tensor/module filter (regex)", key="sidebar_filter", placeholder=r"e.g. conv|bn\d")
        )
        depth_max = max(2, _max_depth(tables))  # a slider needs two values; depth 2 of a flat model is depth 1
        pick_default("sidebar_depth", range(1, depth_max + 1), 2)
        depth = st.slider("Module depth for grouping", 1, depth_max, key="sidebar_depth")
        step_range = None
        bounds = _step_bounds(tables)
        if bounds is not None:
            current = st.session_state.get("sidebar_step_range")
            if not (isinstance(current, tuple) and bounds[0] <= current[0] <= current[1] <= bounds[1]):
                st.session_state["sidebar_step_range"] = bounds
            chosen = st.slider("Step range", bounds[0], bounds[1], key="sidebar_step_range")
            step_range = None if tuple(chosen) == bounds else (int(chosen[0]), int(chosen[1]))
        st.divider()
        _reload_panel(config)
    filtered = _filtered(fingerprint, tuple(runs), step_range, tables)
    return ViewContext(
        config=config, tables=filtered, fingerprint=fingerprint, runs=list(runs), pattern=pattern,
        depth=depth, step_range=step_range, all_runs=all_runs,
    )  # fmt: skip


def finite_steps(frame: pd.DataFrame) -> np.ndarray:
    """Sorted unique finite steps of ``frame``."""
    steps = pd.to_numeric(frame["step"], errors="coerce").dropna().unique()
    return np.sort(steps.astype(np.int64))
