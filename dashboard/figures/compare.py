"""Compare view: two checkpoints side by side — tensors added, removed, reshaped, and the largest changes.

The relative change of a tensor is ``‖b − a‖ / ‖a‖``. It is exact (``method == "exact"``) when the cache holds
``‖b − a‖``: the pair is consecutive in its run (``update_norm``), or one of them is the run's first checkpoint
(``dist_from_first``). Otherwise (other pairs, two runs) it is the lower bound that the statistics allow,
``√(n·((μb − μa)² + (σb − σa)²)) / ‖a‖`` (``method == "lower bound"``; a true bound for population std,
since the std of a difference is at least the difference of the stds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ckptboard.core.errors import UsageError
from ckptboard.core.schema import StatsTables
from ckptboard.dashboard.figures._common import empty_figure, format_shape, tensor_label

__all__ = ["CHANGE_COLUMNS", "CompareResult", "compare_checkpoints", "compare_figure"]

CHANGE_COLUMNS: tuple[str, ...] = (
    "group", "name", "module", "kind", "shape", "numel", "norm_a", "norm_b", "abs_change", "rel_change", "method",
)
_KEY = ["group", "name"]


@dataclass
class CompareResult:
    """What changed from ``checkpoint_a`` to ``checkpoint_b``."""

    checkpoint_a: str
    checkpoint_b: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reshaped: list[tuple[str, str, str]] = field(default_factory=list)  # (name, shape in a, shape in b)
    changes: pd.DataFrame = field(default_factory=pd.DataFrame)


def _rows(tables: StatsTables, checkpoint: str) -> pd.DataFrame:
    rows = tables.tensors[tables.tensors["checkpoint"] == checkpoint]
    if rows.empty:
        raise UsageError(f"checkpoint {checkpoint!r} has no statistics in the cache; pick one from the overview")
    return rows.drop_duplicates(_KEY, keep="last").assign(shape=lambda d: d["shape"].map(format_shape))


def _exact_distance(tables: StatsTables, run_a: str, a: str, run_b: str, b: str) -> pd.Series:
    """``‖b − a‖`` per (group, name) where the updates table holds it, else empty."""
    if run_a != run_b:
        return pd.Series(dtype=float)
    u = tables.updates[tables.updates["run"] == run_a]
    forward = (u["checkpoint"] == b) & (u["prev_checkpoint"] == a)
    pair = u[forward | ((u["checkpoint"] == a) & (u["prev_checkpoint"] == b))]
    if not pair.empty:
        return pair.set_index(_KEY)["update_norm"].astype(float)
    ck = tables.checkpoints[tables.checkpoints["run"] == run_a].sort_values("step", kind="stable")
    first = ck["checkpoint"].iloc[0] if len(ck) else None
    other = b if a == first else a if b == first else None
    if other is None:
        return pd.Series(dtype=float)
    return u[u["checkpoint"] == other].set_index(_KEY)["dist_from_first"].astype(float)


def compare_checkpoints(tables: StatsTables, checkpoint_a: str, checkpoint_b: str) -> CompareResult:
    """Tensors added/removed/reshaped and the relative change per common tensor, largest first (NaN last)."""
    a, b = _rows(tables, checkpoint_a), _rows(tables, checkpoint_b)
    ka, kb = a.set_index(_KEY), b.set_index(_KEY)
    label = lambda keys: [tensor_label(g, n) for g, n in keys]  # noqa: E731
    added = label(kb.index.difference(ka.index))
    removed = label(ka.index.difference(kb.index))
    common = ka.index.intersection(kb.index, sort=False)
    shape_a, shape_b = ka.loc[common, "shape"], kb.loc[common, "shape"]
    differs = (shape_a != shape_b).to_numpy()
    reshaped = [(tensor_label(*k), sa, sb) for k, sa, sb in zip(common[differs], shape_a[differs], shape_b[differs])]
    same = common[~differs]
    ra, rb = ka.loc[same], kb.loc[same]
    n = ra["numel"].to_numpy(dtype=float)
    bound = np.sqrt(n * ((rb["mean"].to_numpy(dtype=float) - ra["mean"].to_numpy(dtype=float)) ** 2
                         + (rb["std"].to_numpy(dtype=float) - ra["std"].to_numpy(dtype=float)) ** 2))
    if checkpoint_a == checkpoint_b:
        exact = pd.Series(0.0, index=same)
    else:
        exact = _exact_distance(tables, a["run"].iloc[0], checkpoint_a, b["run"].iloc[0], checkpoint_b)
        exact = exact[~exact.index.duplicated(keep="last")].reindex(same)
    has_exact = exact.notna().to_numpy()
    dist = np.where(has_exact, exact.to_numpy(dtype=float), bound)
    norm_a = ra["norm"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A zero ‖a‖ gives 0 (no change) or inf; a NaN anywhere stays NaN and sorts last.
        rel = np.select([norm_a > 0, (norm_a == 0) & (dist == 0), (norm_a == 0) & (dist > 0)],
                        [dist / norm_a, 0.0, np.inf], default=np.nan)
    changes = pd.DataFrame({
        "group": same.get_level_values(0), "name": same.get_level_values(1),
        "module": ra["module"].to_numpy(), "kind": ra["kind"].to_numpy(), "shape": ra["shape"].to_numpy(),
        "numel": ra["numel"].to_numpy(), "norm_a": norm_a, "norm_b": rb["norm"].to_numpy(dtype=float),
        "abs_change": dist, "rel_change": rel, "method": np.where(has_exact, "exact", "lower bound"),
    }, columns=list(CHANGE_COLUMNS))
    changes = changes.sort_values("rel_change", ascending=False, na_position="last", kind="stable")
    return CompareResult(checkpoint_a, checkpoint_b, added, removed, reshaped, changes.reset_index(drop=True))


def compare_figure(result: CompareResult, top: int = 20) -> go.Figure:
    """Horizontal bars of the ``top`` largest finite relative changes, largest at the top; one trace per method."""
    ch = result.changes
    ch = ch[np.isfinite(ch["rel_change"].to_numpy(dtype=float))].head(top)
    if ch.empty:
        return empty_figure("No tensors in common to compare")
    labels = [tensor_label(g, n) for g, n in zip(ch["group"], ch["name"])]
    ch = ch.assign(label=labels)
    fig = go.Figure()
    for method, color in (("exact", "#1f77b4"), ("lower bound", "#ff7f0e")):
        part = ch[ch["method"] == method]
        if part.empty:
            continue
        fig.add_trace(go.Bar(
            x=part["rel_change"].to_numpy(dtype=float), y=part["label"].to_numpy(), orientation="h",
            name="‖b−a‖/‖a‖" if method == "exact" else "lower bound from mean/std", marker_color=color,
            customdata=part[["norm_a", "norm_b", "abs_change"]].to_numpy(dtype=float), meta={"method": method},
            hovertemplate="%{y}<br>relative change %{x:.4g}"
                          "<br>‖a‖ %{customdata[0]:.4g} · ‖b‖ %{customdata[1]:.4g}"
                          "<br>‖b−a‖ %{customdata[2]:.4g}<extra></extra>",
        ))
    fig.update_yaxes(categoryorder="array", categoryarray=labels[::-1])
    fig.update_layout(
        title=f"Largest relative changes: {result.checkpoint_a} → {result.checkpoint_b}",
        xaxis_title="relative change ‖b−a‖/‖a‖", height=max(300, 22 * len(ch) + 140), barmode="overlay",
        legend={"orientation": "h", "y": -0.15},
    )
    return fig
