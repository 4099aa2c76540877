"""Helpers shared by the figure builders: step decimation, tensor selection, labels, the colour ramp, empty figures.

Tensors are identified by ``(group, name)``; :func:`tensor_label` writes that as ``name`` for the bare state_dict
(group ``""``) and ``group:name`` otherwise, and the builders accept either spelling wherever they take names.
Charts label a tensor with :func:`display_labels`: the group is shown only where its checkpoint has more than one,
so Lightning's ``state_dict:conv1.weight`` and a safetensors ``conv1.weight`` are one line name across runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale

from ckptboard.core.errors import UsageError
from ckptboard.core.schema import StatsTables, format_shape, tensor_label  # re-exported: the builders' helpers
from ckptboard.dashboard.text import format_bytes

__all__ = [
    "decimate_steps",
    "select_tensors",
    "empty_figure",
    "tensor_label",
    "format_shape",
    "module_prefix",
    "module_group",
    "compile_pattern",
    "step_ramp",
    "series_color",
    "series_dash",
    "display_labels",
    "shorten",
    "short_labels",
    "byte_ticks",
]

# Old steps dark, recent steps bright, like TensorBoard's histogram ramp.
_RAMP = "Plasma"


def decimate_steps(steps: Sequence[int] | np.ndarray, max_points: int = 500) -> np.ndarray:
    """At most ``max_points`` of the sorted unique ``steps``, evenly spread, always keeping the first and last.

    Even spacing rather than TensorBoard's reservoir sampling so that a reload draws the same points again.
    """
    unique = np.unique(np.asarray(pd.Series(steps).dropna(), dtype=float))
    if max_points < 2:
        raise UsageError(f"max_points must be at least 2 (keeps the first and last step), got {max_points}")
    if len(unique) <= max_points:
        return unique
    idx = np.unique(np.rint(np.linspace(0, len(unique) - 1, max_points)).astype(int))
    return unique[idx]


def module_prefix(module: pd.Series, prefix: str) -> pd.Series:
    """Rows whose module is ``prefix`` or lies under it (``""`` matches every module)."""
    if not prefix:
        return pd.Series(True, index=module.index)
    module = module.fillna("").astype(str)
    return (module == prefix) | module.str.startswith(prefix + ".")


def compile_pattern(pattern: str) -> re.Pattern:
    """The user's regex, case-insensitive; a bad one is a :class:`UsageError` naming it."""
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise UsageError(f"tensor filter {pattern!r} is not a valid regular expression ({e}); fix or clear it") from e


def select_tensors(
    tables: StatsTables,
    run: str | Sequence[str] | None = None,
    pattern: str | None = None,
    kinds: Sequence[str] | None = None,
    module: str | None = None,
    depth: int | None = None,
    *,
    checkpoint: str | None = None,
) -> pd.DataFrame:
    """Rows of ``tables.tensors`` matching run(s), a name regex, kinds, a module prefix (and a checkpoint);
    ``depth`` adds a ``module_group`` column (the module path cut to ``depth`` dotted parts)."""
    df = tables.tensors
    if checkpoint is not None:
        df = df[df["checkpoint"] == checkpoint]
    mask = pd.Series(True, index=df.index)
    if run is not None:
        runs = [run] if isinstance(run, str) else list(run)
        mask &= df["run"].isin(runs)
    if kinds:
        mask &= df["kind"].isin([str(k) for k in kinds])
    if module:
        mask &= module_prefix(df["module"], module)
    if pattern:
        rx = compile_pattern(pattern)
        labels = df["name"].astype(str)
        mask &= labels.str.contains(rx) | (df["group"].astype(str) + ":" + labels).str.contains(rx)
    out = df[mask]
    if depth is not None:
        out = out.assign(module_group=module_group(out["module"], depth))
    return out


def module_group(module: pd.Series, depth: int) -> pd.Series:
    """Module paths cut to their first ``depth`` dotted parts (``0`` groups everything under ``""``)."""
    if depth < 0:
        raise UsageError(f"module depth must be 0 or more, got {depth}")
    parts = module.fillna("").astype(str).str.split(".", n=depth, regex=False)
    return parts.map(lambda p: ".".join(p[:depth]))


def empty_figure(message: str) -> go.Figure:
    """A blank figure carrying ``message`` as an annotation, for views with nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 14})
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, height=240, meta={"empty": True})
    return fig


def step_ramp(n: int) -> list[str]:
    """``n`` colours from oldest (dark) to newest (bright)."""
    if n <= 0:
        return []
    return sample_colorscale(_RAMP, [0.0] if n == 1 else list(np.linspace(0.0, 0.9, n)))


def series_color(i: int) -> str:
    """The ``i``-th categorical colour (runs, tensors), cycling."""
    palette = qualitative.Plotly
    return palette[i % len(palette)]


_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def series_dash(i: int) -> str:
    """The ``i``-th line dash (tensors of one run, drawn in the run's colour), cycling."""
    return _DASHES[i % len(_DASHES)]


def display_labels(frame: pd.DataFrame, name_column: str = "name") -> np.ndarray:
    """Chart labels of ``frame``'s rows: ``name`` where the row's checkpoint holds one group (state_dict), else
    ``group:name`` (a model and its EMA copy stay apart). Without a ``checkpoint`` column, the whole frame counts."""
    groups = frame["group"].fillna("").astype(str)
    names = frame[name_column].fillna("").astype(str)
    if "checkpoint" in frame.columns:
        several = groups.groupby(frame["checkpoint"]).transform("nunique").to_numpy() > 1
    else:
        several = np.full(len(frame), groups.nunique() > 1)
    return np.where(several & (groups != "").to_numpy(), (groups + ":" + names).to_numpy(), names.to_numpy())


def shorten(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters by dropping its middle (``encoder.lay…0.attention.output.dense``):
    both the root and the most specific part stay readable; the full name goes on hover."""
    text = str(text)
    if len(text) <= width:
        return text
    head = max(1, (width - 1) // 3)
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def short_labels(labels: Sequence[str], width: int = 40) -> list[str]:
    """Labels of one chart cut to ``width`` characters while staying distinct: first the dotted prefix they all
    share goes (``…``), then inner parts of a path shrink to 3 letters from the root down, as far as needed (numbers
    and the last part stay), then
    the middle goes; a label that would still collide with another stays in full."""
    labels = [str(x) for x in labels]
    if all(len(x) <= width for x in labels):
        return labels
    parts = [x.split(".") for x in labels]
    common = 0
    if len(labels) > 1:
        while all(len(p) > common + 1 for p in parts) and len({tuple(p[: common + 1]) for p in parts}) == 1:
            common += 1
    out = []
    for x, p in zip(labels, parts):
        if len(x) <= width:
            out.append(x)
            continue
        rest = p[common:]
        short = ("…" if common else "") + ".".join(rest)
        inner = list(rest[:-1])
        for k, q in enumerate(inner):  # from the root down, only as far as needed
            if len(short) <= width:
                break
            if not q.isdigit() and len(q) > 4:
                inner[k] = q[:3]
                short = ("…" if common else "") + ".".join([*inner, rest[-1]])
        out.append(shorten(short, width))
    seen: dict[str, int] = {}
    for s in out:
        seen[s] = seen.get(s, 0) + 1
    return [s if seen[s] == 1 else full for s, full in zip(out, labels)]


_STEPS_1_2_5 = (1.0, 2.0, 2.5, 5.0, 10.0)


def byte_ticks(top: float, n: int = 5) -> tuple[list[float], list[str]]:
    """About ``n`` round tick values from 0 to ``top`` bytes, labelled like the table ("184.0 KiB")."""
    if not top or top <= 0 or top != top:
        return [0.0], [format_bytes(0)]
    unit = 1024 ** min(4, int(math.log(top, 1024))) if top >= 1 else 1
    raw = top / unit / n
    scale = 10 ** math.floor(math.log10(raw))
    step = next(m * scale for m in _STEPS_1_2_5 if m * scale >= raw) * unit
    values = [i * step for i in range(int(top // step) + 2)]
    return values, [format_bytes(v) for v in values]
