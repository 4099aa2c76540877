"""The exact difference of two checkpoint files (``ckptboard diff``'s JSON) as a table and a histogram of B − A."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ckptboard.dashboard.figures._common import empty_figure

__all__ = ["DIFF_COLUMNS", "diff_frame", "diff_histogram_figure"]

DIFF_COLUMNS = ("a", "b", "match", "kind", "shape", "rel_change", "cosine", "sign_flips", "sign_flip_fraction",
                "max_abs_diff", "mean_diff")


def diff_frame(data: dict[str, Any]) -> pd.DataFrame:
    """One row per matched pair of a :meth:`DiffReport.to_json` object, parameters first, largest change first."""
    frame = pd.DataFrame([{c: t[c] for c in DIFF_COLUMNS} for t in data["tensors"]], columns=list(DIFF_COLUMNS))
    if frame.empty:
        return frame
    frame["shape"] = frame["shape"].map(lambda s: "[" + ", ".join(map(str, s)) + "]")
    frame["rel_change"] = frame["rel_change"].astype(float)
    order = frame.assign(_buffer=frame["kind"] != "parameter").sort_values(
        ["_buffer", "rel_change"], ascending=[True, False], na_position="last", kind="stable")
    return order.drop(columns="_buffer").reset_index(drop=True)


def diff_histogram_figure(tensor: dict[str, Any], *, log_y: bool = True) -> go.Figure:
    """The histogram of B − A of one matched pair (its bins as drawn bars, each as wide as the bin)."""
    hist = tensor["histogram"]
    lo, hi, counts = (np.asarray(hist[k], dtype=float) for k in ("lo", "hi", "counts"))
    label = tensor["a"] if tensor["a"] == tensor["b"] else f"{tensor['a']} → {tensor['b']}"
    if counts.size == 0:
        return empty_figure(f"{label}: no finite difference to draw")
    if counts.sum() == counts[(lo <= 0) & (hi >= 0)].sum() and tensor["diff_norm"] == 0:
        return empty_figure(f"{label}: identical in both checkpoints")
    width = np.maximum(hi - lo, 1e-300)
    fig = go.Figure(go.Bar(x=(lo + hi) / 2, y=counts, width=width, marker={"line": {"width": 0}},
                           customdata=np.stack([lo, hi], axis=1),
                           hovertemplate="[%{customdata[0]:.4g}, %{customdata[1]:.4g}]: %{y} elements<extra></extra>"))
    fig.update_layout(title=f"{label}: B − A (‖B−A‖/‖A‖ = {_fmt(tensor['rel_change'])}, cosine "
                            f"{_fmt(tensor['cosine'])}, {tensor['sign_flips']:,} sign flips)",
                      xaxis_title="B − A", yaxis_title="elements", height=380, bargap=0)
    fig.update_yaxes(type="log" if log_y else "linear")
    return fig


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.4g}"
