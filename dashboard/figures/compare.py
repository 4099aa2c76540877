"""Compare view: the largest changes between two checkpoints, as computed by
:func:`ckptboard.core.health.compare_checkpoints` (exact, or a lower bound from mean/std)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ckptboard.core.health import ChangeMethod, CompareResult
from ckptboard.dashboard.figures._common import display_labels, empty_figure, short_labels

_LABEL_WIDTH = 48

__all__ = ["compare_figure"]

def compare_figure(result: CompareResult, top: int = 20) -> go.Figure:
    """Horizontal bars of the ``top`` largest finite relative changes, largest at the top; one trace per method.
    Counters (integer and bool tensors such as ``num_batches_tracked``) are left out: they count, not learn."""
    ch = result.changes
    if "counter" in ch.columns:
        ch = ch[~ch["counter"].astype(bool)]
    ch = ch[np.isfinite(ch["rel_change"].to_numpy(dtype=float))].head(top)
    if ch.empty:
        return empty_figure("No floating-point tensors in common to compare")
    full = display_labels(ch).tolist()
    labels = short_labels(full, _LABEL_WIDTH)
    ch = ch.assign(label=labels, full=full)
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
            text=part["full"].to_numpy(), textposition="none",
            hovertemplate="%{text}<br>relative change %{x:.4g}"
                          "<br>‖a‖ %{customdata[0]:.4g} · ‖b‖ %{customdata[1]:.4g}"
                          "<br>‖b−a‖ %{customdata[2]:.4g}<extra></extra>",
        ))
    fig.update_yaxes(categoryorder="array", categoryarray=labels[::-1])
    fig.update_layout(
        title=f"Largest relative changes: {result.checkpoint_a} → {result.checkpoint_b}",
        xaxis_title="relative change ‖b−a‖/‖a‖", height=max(300, 22 * len(ch) + 140), barmode="overlay",
        legend={"orientation": "h", "y": -0.15}, yaxis={"automargin": True},
    )
    return fig
