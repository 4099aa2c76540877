"""The app's state: loading and summarising the stats cache (with locks and progress) and the view context.

The app holds no whole-table copy: one :class:`~ckptboard.core.dataset.StatsDataset` per cache state (keyed on the
cache's fingerprint: every fragment's name, size and mtime) holds only the index of checkpoints, and each view reads
the rows it draws through a :class:`~ckptboard.core.dataset.TableView` restricted to the sidebar's runs and steps and
narrowed further by the view (:meth:`ViewContext.narrow`: a tensor, a module, two checkpoints). Reads are shared
across reruns and sessions by ``st.cache_resource`` (a few entries), keyed on the fingerprint and the selection.
Derived figures and frames go through :func:`memo`, keyed on the same fingerprint plus the selection. An empty
cache is filled before the first page (with progress); a filled one is drawn at once and checked for new
checkpoints after the page (only when a ``stat`` of ROOT's files finds a change: the full look imports torch), on
Refresh, and on the auto-refresh interval.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import streamlit as st

from ckptboard.core.cache import CacheWarning, StatsCache
from ckptboard.core.errors import CkptboardError, UsageError
from ckptboard.core.schema import StatsTables, TableName
from ckptboard.dashboard.config import AppConfig, parse_app_args

if TYPE_CHECKING:
    from ckptboard.core.dataset import Selection, StatsDataset, TableView
    from ckptboard.core.summarize import Plan, SummaryReport
    from ckptboard.core.task import Receipt

__all__ = [
    "ARGV_KEY",
    "ViewContext",
    "app_config",
    "give_back_freed_memory",
    "load_tables",
    "look_for_new_checkpoints",
    "skipped_files",
    "aliases",
    "filter_tables",
    "tensor_index",
    "distinct_modules",
    "view_context",
    "request_refresh",
    "refresh_if_due",
    "loaded_at",
    "memo",
    "detached",
    "pick_default",
]

ARGV_KEY = "app_argv"  # session_state key tests set to pass the app its argv (AppTest keeps pytest's sys.argv)
# A new session looks for new checkpoints unless another session of this server did within this many seconds
# (TensorBoard reloads on a server-side interval; sessions opened together share one look).
RECHECK_AFTER_S = 10.0

_FINGERPRINT_KEY = "cache_fingerprint"
_CHECK_KEY = "check_for_new_checkpoints"
_REFRESH_KEY = "refresh_requested"
_LOADED_AT_KEY = "loaded_at"
_STATUS_SLOT = "_status_slot"


@dataclass
class ViewContext:
    """What every view's ``render(ctx)`` gets: the config, the filtered tables and the sidebar's choices."""

    config: AppConfig
    tables: TableView | StatsTables  # restricted to the chosen runs and step range, read on first access
    fingerprint: str
    runs: list[str]
    pattern: str | None = None  # tensor/module regex from the sidebar, already validated
    depth: int | None = None  # module depth for grouping
    step_range: tuple[int, int] | None = None
    all_runs: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        """Identity of what the views draw: the cache's fingerprint plus the sidebar filters and any narrowing."""
        return (self.fingerprint, tuple(self.runs), self.step_range, repr(getattr(self.tables, "selection", None)))

    def narrow(self, **changes: Any) -> ViewContext:
        """This context with its tables narrowed (``runs``, ``checkpoints``, ``names``, ``modules``: see
        :class:`~ckptboard.core.dataset.Selection`), so that a figure reads only what it draws."""
        if not hasattr(self.tables, "narrow"):  # whole tables (tests, the export): figures filter them themselves
            return self
        return replace(self, tables=self.tables.narrow(**changes))

    def tensor_index(self) -> pd.DataFrame:
        """Distinct ``(run, group, name, module, kind)`` rows of the tensors in the chosen runs and steps, with
        ``numel``: what pickers list (see :func:`tensor_index`)."""
        return tensor_index(self.tables, self.fingerprint)

    def matches(self, values: Sequence[str]) -> list[bool]:
        """Which of ``values`` the sidebar filter finds (``re.search``); all of them without a filter."""
        if not self.pattern:
            return [True] * len(values)
        regex = re.compile(self.pattern)
        return [regex.search(str(v)) is not None for v in values]

    def tensor_names(self, run: str | None = None) -> list[str]:
        """Sorted display names of the tensors (of ``run`` or every chosen run) matching the sidebar filter."""
        frame = self.tensor_index()
        if run is not None:
            frame = frame[frame["run"] == run]
        names = sorted(frame["name"].unique())
        return [n for n, keep in zip(names, self.matches(names)) if keep]

    def modules(self) -> list[str]:
        """Module paths cut to the sidebar depth (``""`` is the root module), sorted."""
        modules = distinct_modules(self.tables, self.fingerprint)
        if self.depth:
            modules = [".".join(m.split(".")[: self.depth]) for m in modules]
        modules = sorted(set(modules) - {""})
        return [m for m, keep in zip(modules, self.matches(modules)) if keep]

    def checkpoints(self, run: str | None = None) -> list[str]:
        """Checkpoint paths (relative to ROOT) of ``run`` or every chosen run, by run then step."""
        frame = self.tables.checkpoints
        if run is not None:
            frame = frame[frame["run"] == run]
        return frame.sort_values(["run", "step", "checkpoint"], na_position="first")["checkpoint"].tolist()

    def checkpoint_label(self, checkpoint: str) -> str:
        """``run · step N · file`` for pickers."""
        return self._labels.get(checkpoint, checkpoint)

    @functools.cached_property
    def _labels(self) -> dict[str, str]:
        # Looked up once per page, not per option: a picker calls this for each checkpoint, and each lookup of the
        # shared cache hashes the key (0.1 s for 300 options).
        return _checkpoint_labels(self.key, self.tables.checkpoints)


def tensor_index(tables: TableView | StatsTables, fingerprint: str) -> pd.DataFrame:
    """Distinct ``(run, group, name, module, kind)`` rows of ``tables``' tensors with their largest ``numel``: read
    as five columns from the dataset (shared per selection), or grouped from whole tables."""
    if not hasattr(tables, "dataset"):
        keys = ["run", "group", "name", "module", "kind"]
        return tables.tensors.groupby(keys, sort=False, dropna=False)["numel"].max().reset_index()
    return _tensor_index(fingerprint, repr(tables.selection), tables.dataset, tables.selection)


def distinct_modules(tables: TableView | StatsTables, fingerprint: str) -> list[str]:
    """The distinct module paths of ``tables``' tensors, sorted: one column read from the dataset (shared per
    selection; a fraction of :func:`tensor_index`'s cost, which the first page need not pay)."""
    if not hasattr(tables, "dataset"):
        return sorted(set(tables.tensors["module"].dropna().astype(str)))
    return _distinct_modules(fingerprint, repr(tables.selection), tables.dataset, tables.selection)


@st.cache_resource(show_spinner=False, max_entries=4)
def _distinct_modules(fingerprint: str, selection_key: str, _dataset: StatsDataset, _selection: Selection) -> list[str]:
    return _dataset.distinct(TableName.TENSORS, "module", _selection)


@st.cache_resource(show_spinner=False, max_entries=4)
def _tensor_index(fingerprint: str, selection_key: str, _dataset: StatsDataset, _selection: Selection) -> pd.DataFrame:
    return _dataset.tensor_index(_selection)


# What the shared reads may hold, all sessions together: a read larger than this is handed to its caller and not
# kept (at 50 x 20,000 one picker's whole-run read is 75 MB; sixteen such reads were what the server kept).
SHARED_READ_BYTES = 128 << 20


class _SharedReads:
    """Reads kept for every session, least recently used dropped first, within :data:`SHARED_READ_BYTES`."""

    def __init__(self, budget: int = SHARED_READ_BYTES):
        self.budget = budget
        self.lock = threading.Lock()
        self.frames: OrderedDict[tuple, tuple[pd.DataFrame, int]] = OrderedDict()

    def get(self, key: tuple, read: Callable[[], pa.Table]) -> pd.DataFrame:
        with self.lock:
            if key in self.frames:
                self.frames.move_to_end(key)
                return self.frames[key][0]
        rows = read()
        size, frame = rows.nbytes, rows.to_pandas()
        del rows
        with self.lock:
            if size <= self.budget:
                self.frames[key] = (frame, size)
                while sum(n for _, n in self.frames.values()) > self.budget:
                    self.frames.popitem(last=False)
        return frame


@st.cache_resource(show_spinner=False)
def _shared_reads() -> _SharedReads:
    return _SharedReads()


def _shared_read(dataset: StatsDataset, table: TableName, selection: Selection) -> pd.DataFrame:
    """One table of one selection, shared by every session while it fits; views must not modify it."""
    key = (dataset.fingerprint, str(table), repr(selection))
    return _shared_reads().get(key, lambda: dataset.read(table, selection))


@st.cache_resource(show_spinner=False, max_entries=4)
def _checkpoint_labels(key: tuple, _checkpoints: pd.DataFrame) -> dict[str, str]:
    """Every checkpoint's picker label, built once per cache state and filters (pickers call it per option)."""
    labels = {}
    for run, checkpoint, step in _checkpoints[["run", "checkpoint", "step"]].itertuples(index=False):
        shown = "no step" if pd.isna(step) else f"step {int(step)}"
        labels[checkpoint] = f"{run} · {shown} · {checkpoint.rsplit('/', 1)[-1]}"
    return labels


def give_back_freed_memory() -> None:
    """Return the heap a view's reads freed to the system (glibc's ``malloc_trim``; nothing elsewhere): freed
    blocks otherwise stay in the process, and the next view's peak adds to them."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


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


@dataclass
class _RootState:
    """What this server knows about one ROOT, shared by its sessions: a lock, and the last summarize."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    summarized_at: float = 0.0
    skipped: list[str] = field(default_factory=list)  # still being written at the last summarize
    aliases: dict[str, str] = field(default_factory=dict)  # copies shown once (last.ckpt -> what it copies)


@st.cache_resource(show_spinner=False)
def _root_state(root: str, cache_dir: str | None) -> _RootState:
    return _RootState()


def _state_of(config: AppConfig) -> _RootState:
    return _root_state(str(config.root), str(config.cache_dir) if config.cache_dir else None)


def skipped_files(config: AppConfig) -> list[str]:
    """Files the last summarize of ROOT skipped as still being written (read on a later refresh)."""
    return list(_state_of(config).skipped)


def aliases(config: AppConfig) -> dict[str, str]:
    """Copies the last summarize of ROOT showed once (Lightning's ``last.ckpt`` -> the checkpoint it copies)."""
    return dict(_state_of(config).aliases)


def _summarize_missing(config: AppConfig, *, announce: bool = False) -> None:
    """Read the checkpoints the cache does not hold yet, with a status box and a progress bar while it works.

    ``announce`` (an empty cache: nothing else to show) opens the status box at once, before the seconds that
    importing torch and listing ROOT take, so the first paint already says what is happening. Two sessions never
    summarize one ROOT at once (the second waits, then finds nothing new).
    """
    shown = _ReadProgress()
    if announce:
        shown.status = st.status(f"Looking for checkpoints under `{config.root}`…", expanded=True)
    from ckptboard.core.executors import LocalExecutor
    from ckptboard.core.summarize import refresh

    root_state = _state_of(config)
    with root_state.lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        try:
            # In a worker process under limits: whatever a hostile file does to it, this server lives.
            report = refresh(config.root, cache_dir=config.cache_dir, model=config.model, trust=config.trust,
                             spectral=config.spectral, executor=LocalExecutor(1, isolate=True), on_plan=shown.start, progress=shown.advance,
                             on_compact=shown.compacting)
        except BaseException:
            shown.fail()
            raise
        shown.finish(report)
        root_state.summarized_at = time.time()
        root_state.skipped = list(report.skipped_incomplete)
        root_state.aliases = dict(report.aliases)
    for warning in caught:
        if issubclass(warning.category, CacheWarning):
            st.warning(str(warning.message))


@dataclass
class _ReadProgress:
    """The status box and progress bar of one summarize, drawn only when there are checkpoints to read."""

    total: int = 0
    done: int = 0
    status: Any = None
    bar: Any = None
    compacted: list[str] = field(default_factory=list)  # runs whose tables were compacted (core.compact)

    def start(self, work: Plan) -> None:
        self.total = len(work.tasks)
        if self.total:
            label = f"Reading {self.total} new checkpoint(s)…"
            if self.status is None:
                self.status = st.status(label, expanded=True)
            else:
                self.status.update(label=label)
            self.bar = self.status.progress(0.0, text=f"0/{self.total}")

    def advance(self, receipt: Receipt) -> None:
        self.done += 1
        self.bar.progress(self.done / self.total, text=f"{self.done}/{self.total} · {receipt.relpath}")

    def compacting(self, run: str, fragments: int) -> None:
        """A run's tables are copied into one file each (seconds at hundreds of checkpoints): say so meanwhile."""
        label = f"Compacting run {run!r}: {fragments} checkpoints' tables into one file each…"
        if self.status is None:
            self.status = st.status(label, expanded=False)
        else:
            self.status.update(label=label)
        self.compacted.append(run)

    def finish(self, report: SummaryReport) -> None:
        if self.status is not None:
            label = f"Read {report.computed} new checkpoint(s): {report.line()}" if self.total else \
                "No checkpoints to read"
            if self.compacted:
                label += f" · compacted {', '.join(repr(r) for r in self.compacted)}"
            self.status.update(label=label, state="complete", expanded=False)

    def fail(self) -> None:
        if self.status is not None:
            self.status.update(state="error")


def _fingerprint(config: AppConfig) -> str:
    """Identity of the cache's content: changes when any fragment is written."""
    return StatsCache(config.root, config.cache_dir).fingerprint()


@st.cache_resource(show_spinner=False, max_entries=2)
def _dataset(root: str, cache_dir: str | None, fingerprint: str) -> StatsDataset:
    """The dataset of one cache state (its index of checkpoints), shared by every session."""
    from ckptboard.core.dataset import StatsDataset

    return StatsDataset(root, cache_dir=cache_dir)


def request_refresh() -> None:
    """Callback: summarize again on the next run (reads only checkpoints that are new since)."""
    st.session_state[_REFRESH_KEY] = True


def load_tables(config: AppConfig) -> tuple[TableView, str]:
    """A lazy view of every table of the cache, and its fingerprint. An empty cache is filled first, with progress; a
    cache that holds data is drawn at once and checked for new checkpoints after the page (:func:`look_for_new_checkpoints`)."""
    st.session_state[_STATUS_SLOT] = st.empty()  # where a later summarize shows its progress: the top of the page
    refresh = st.session_state.pop(_REFRESH_KEY, False)
    cache_dir = str(config.cache_dir) if config.cache_dir else None
    if _FINGERPRINT_KEY not in st.session_state or refresh:
        cache = StatsCache(config.root, config.cache_dir)
        fragments = cache.fragments()
        fingerprint = cache.fingerprint(fragments)
        if refresh or not fragments:
            fingerprint = _summarize_into_slot(config, announce=not fragments)
        elif time.time() - _state_of(config).summarized_at > RECHECK_AFTER_S:
            # The full look imports torch (seconds a fresh server's first chart waited for): only when a stat of
            # ROOT's files says something may be new.
            st.session_state[_CHECK_KEY] = _dataset(str(config.root), cache_dir, fingerprint).unseen_change()
        st.session_state[_FINGERPRINT_KEY] = fingerprint
        st.session_state[_LOADED_AT_KEY] = time.time()
    fingerprint = st.session_state[_FINGERPRINT_KEY]
    return _dataset(str(config.root), cache_dir, fingerprint).view(reader=_shared_read), fingerprint


def look_for_new_checkpoints(config: AppConfig) -> None:
    """After a new session's first page, when a file under ROOT changed since the cache was written: summarize what
    is new, and rerun if anything was."""
    if not st.session_state.pop(_CHECK_KEY, None):
        return
    fingerprint = _summarize_into_slot(config)
    if fingerprint != st.session_state.get(_FINGERPRINT_KEY):
        st.session_state[_FINGERPRINT_KEY] = fingerprint
        st.rerun()


def _summarize_into_slot(config: AppConfig, *, announce: bool = False) -> str:
    """Summarize what is missing, showing progress at the top of the page; the cache's new fingerprint."""
    slot = st.session_state.get(_STATUS_SLOT)
    try:
        with slot.container() if slot is not None else st.container():
            _summarize_missing(config, announce=announce)
    except CkptboardError as e:  # the cache itself is unusable: say so and show what is there
        st.error(f"{type(e).__name__}: {e}")
    st.session_state[_LOADED_AT_KEY] = time.time()
    return _fingerprint(config)


def refresh_if_due(config: AppConfig, seconds: int) -> None:
    """Auto-refresh: summarize when ``seconds`` have passed since the last read; rerun the page only when the
    cache really changed (a full rerun also calls this, which must then do nothing)."""
    if time.time() - st.session_state.get(_LOADED_AT_KEY, 0.0) < 0.9 * seconds:
        return
    _summarize_missing(config)
    st.session_state[_LOADED_AT_KEY] = time.time()
    fingerprint = _fingerprint(config)
    if fingerprint != st.session_state.get(_FINGERPRINT_KEY):
        st.session_state[_FINGERPRINT_KEY] = fingerprint
        st.rerun(scope="app")


def loaded_at() -> float:
    """When this session last read the cache (epoch seconds)."""
    return st.session_state.get(_LOADED_AT_KEY, time.time())


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


def view_context(config: AppConfig, tables: TableView | StatsTables, fingerprint: str, *, runs: Sequence[str],
                 pattern: str | None, depth: int | None, step_range: tuple[int, int] | None,
                 all_runs: list[str]) -> ViewContext:
    """The context the views draw from: ``tables`` restricted to the sidebar's runs and steps (read lazily)."""
    if hasattr(tables, "narrow"):
        filtered = tables.narrow(runs=tuple(runs), steps=step_range)
    else:
        filtered = filter_tables(tables, runs, step_range)
    return ViewContext(
        config=config, tables=filtered, fingerprint=fingerprint, runs=list(runs), pattern=pattern,
        depth=depth, step_range=step_range, all_runs=all_runs,
    )  # fmt: skip


@st.cache_resource(show_spinner=False, max_entries=256)
def _memo(name: str, key: tuple, call_key: str, _thunk: Callable[[], Any]) -> Any:
    return _thunk()


def memo(fn: Callable[..., Any], ctx: ViewContext, *args: Any, **kwargs: Any) -> Any:
    """``fn(ctx.tables, *args, **kwargs)``, computed once per cache fingerprint, sidebar filters and arguments.

    The result is shared across reruns and sessions: callers must not modify it. What ``fn`` reads is read through
    a view of its own, not the shared reads: the frames are freed once the result is kept (at 600,000 tensor rows
    the shared reads of every view's inputs held a gigabyte).
    """
    name = f"{fn.__module__}.{fn.__qualname__}"
    tables = detached(ctx.tables)
    return _memo(name, ctx.key, repr((args, sorted(kwargs.items()))), lambda: fn(tables, *args, **kwargs))


def detached(tables: TableView | StatsTables) -> TableView | StatsTables:
    """``tables``' selection read through a view of its own, not the shared reads: for work whose frames should be
    freed when it ends (a memoised figure, a download built on click, off the script's thread)."""
    return tables.dataset.view(tables.selection) if hasattr(tables, "dataset") else tables


def pick_default(key: str, options: Sequence[Any], default: Any) -> None:
    """Seed ``session_state[key]`` with ``default`` unless it already holds a value that is still an option.

    ``default`` may be a zero-argument callable, called only when it is needed.
    """
    current = st.session_state.get(key)
    if isinstance(current, list):
        allowed = set(options)
        kept = [v for v in current if v in allowed]
        if kept or not current:
            st.session_state[key] = kept
            return
    elif current is not None and current in options:
        return
    st.session_state[key] = default() if callable(default) else default


