"""Runs without steps (``best/``, ``final/``, ``save_pretrained`` folders, accelerate): drawn on a position axis.

In a run where no checkpoint has a step, each checkpoint's step is taken, for drawing only, to be its position in
the run (0, 1, …) ordered by modification time, then name; traces and ticks are labelled by checkpoint name. The
cached tables and the export keep the missing steps. Runs with steps are returned unchanged (same frames).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import pandas as pd

from ckptboard.core.schema import StatsTables

__all__ = ["with_positions", "stepless_runs", "on_position_axis", "POSITION_AXIS_TITLE"]

POSITION_AXIS_TITLE = "checkpoint (no steps: by modification time)"
_RUNS_ATTR = "stepless_runs"


def stepless_runs(tables: StatsTables) -> list[str]:
    """Runs of ``tables`` in which no checkpoint has a step (as marked by :func:`with_positions`)."""
    return list(tables.checkpoints.attrs.get(_RUNS_ATTR, []))


def with_positions(tables: StatsTables) -> StatsTables:
    """``tables`` with the missing steps of stepless runs replaced by positions (see the module docstring)."""
    ck = tables.checkpoints
    if ck.empty or _RUNS_ATTR in ck.attrs or ck["step"].notna().all():
        return tables
    has_step = ck["step"].notna().groupby(ck["run"]).any()
    runs = sorted(has_step.index[~has_step.to_numpy()])
    if not runs:
        return tables
    order = ck[ck["run"].isin(runs)].sort_values(["run", "mtime", "checkpoint"], kind="stable")
    position = dict(zip(zip(order["run"], order["checkpoint"]), order.groupby("run").cumcount()))
    frames: dict[str, Any] = {}
    for field in dataclasses.fields(tables):
        frame = getattr(tables, field.name)
        if "step" in frame.columns and not frame.empty:
            frame = frame.copy()
            frame["step"] = _fill(frame, "checkpoint", "step", position)
            if "prev_step" in frame.columns:
                frame["prev_step"] = _fill(frame, "prev_checkpoint", "prev_step", position)
        frames[field.name] = frame
    out = StatsTables(**frames)
    out.checkpoints = out.checkpoints.copy() if out.checkpoints is ck else out.checkpoints
    out.checkpoints.attrs[_RUNS_ATTR] = runs
    return out


def _fill(frame: pd.DataFrame, checkpoint_column: str, step_column: str, position: dict) -> pd.Series:
    keys = list(zip(frame["run"], frame[checkpoint_column]))
    filled = pd.Series([position.get(k) for k in keys], index=frame.index, dtype="float64")
    return frame[step_column].astype("float64").fillna(filled)


def on_position_axis(figure_builder: Callable) -> Callable:
    """Decorator for figure builders whose first argument is the tables: they see stepless runs on positions."""

    @functools.wraps(figure_builder)
    def wrapper(tables: StatsTables, *args: Any, **kwargs: Any):
        return figure_builder(with_positions(tables), *args, **kwargs)

    return wrapper
