"""Compare view: the largest changes between two checkpoints, as computed by
:func:`ckptboard.core.health.compare_checkpoints` (exact, or a lower bound from mean/std)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ckptboard.core.health import ChangeMethod, CompareResult
from ckptboard.dashboard.figures._common import empty_figure, tensor_label

__all__ = ["compare_figure"]

def compare_figure(result: CompareResult, top: int = 20) -> go.Figure:
    """Horizontal bars of the ``top`` largest finite relative changes, largest at the top; one trace per method."""
    ch = result.changes
    ch = ch[np.isfinite(ch["rel_change"].to_numpy(dtype=float))].head(top)
    if ch.empty:
        return empty_figure("No tensors in common to compare")
    labels = [tensor_label(g, n) for g, n in zip(ch["group"], ch["name"])]
    ch = ch.assign(label=labels)
    fig = go.Figure()
    for method, color in ((ChangeMethod.EXACT, "#1f77b4"), (ChangeMethod.LOWER_BOUND, "#ff7f0e")):
        part = ch[ch["method"] == method]
        if part.empty:
            continue
        fig.add_trace(go.Bar(
            x=part["rel_change"].to_numpy(dtype=float), y=part["label"].to_numpy(), orientation="h",
            name="‖b−a‖/‖a‖" if method == ChangeMethod.EXACT else "lower bound from mean/std",
            marker_color=color,
            customdata=part[["norm_a", "norm_b", "abs_change"]].to_numpy(dtype=float), meta={"method": method.value},
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
