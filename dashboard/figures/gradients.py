"""Gradients from the saved optimizer state over training: per tensor or per module, runs overlaid.

Module values aggregate their tensors: ``grad_rms`` as sqrt(Σ numel · rms² / Σ numel) (the RMS over the module's
elements), norms as the root of the summed squares, ``update_ratio`` as that update norm over the same aggregate of
the weight norms. Every figure carries the approximation (:data:`ckptboard.core.gradients.APPROXIMATION`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ckptboard.core.errors import UsageError
from ckptboard.core.readings import APPROXIMATION
from ckptboard.dashboard.figures._common import decimate_steps, empty_figure, series_color, tensor_label
from ckptboard.dashboard.figures.histograms import histogram_figure

__all__ = ["GRADIENT_METRICS", "gradient_series", "gradient_figure", "grad_rms_histogram_figure"]

GRADIENT_METRICS: dict[str, str] = {
    "grad_rms": "gradient RMS √mean(v̂)",
    "update_ratio": "Adam update / weight ‖u‖/‖W‖",
    "update_norm": "update norm ‖u‖",
    "m_norm": "first moment ‖m̂‖ (SGD: ‖momentum‖)",
    "grad_rms_max": "largest √v̂",
}


def gradient_series(frame: pd.DataFrame, metric: str, by_module: bool = False) -> pd.DataFrame:
    """Rows ``run, step, group, label, value`` of ``metric`` per tensor, or per module when ``by_module``."""
    if metric not in GRADIENT_METRICS:
        raise UsageError(f"gradient metric must be one of {', '.join(GRADIENT_METRICS)}, got {metric!r}")
    if frame is None or frame.empty:
        return pd.DataFrame(columns=["run", "step", "group", "label", "value"])
    if not by_module:
        out = frame[["run", "step", "group"]].copy()
        out["label"] = frame["name"]
        out["value"] = frame[metric].astype(float)
        return out
    f = frame.assign(
        _rms2=frame["numel"] * frame["grad_rms"].astype(float) ** 2,
        _u2=frame["update_norm"].astype(float) ** 2,
        _w2=frame["weight_norm"].astype(float) ** 2,
        _m2=frame["m_norm"].astype(float) ** 2,
    )
    g = f.groupby(["run", "step", "group", "module"], sort=False, dropna=False)
    agg = g.agg(numel=("numel", "sum"), rms2=("_rms2", "sum"), u2=("_u2", "sum"), w2=("_w2", "sum"),
                m2=("_m2", "sum"), top=("grad_rms_max", "max")).reset_index()
    values = {
        "grad_rms": np.sqrt(agg["rms2"] / agg["numel"]),
        "update_norm": np.sqrt(agg["u2"]),
        "update_ratio": np.sqrt(agg["u2"]) / np.sqrt(agg["w2"]).replace(0.0, np.nan),
        "m_norm": np.sqrt(agg["m2"]),
        "grad_rms_max": agg["top"],
    }
    return pd.DataFrame({"run": agg["run"], "step": agg["step"], "group": agg["group"],
                         "label": agg["module"].replace("", "(root)"), "value": values[metric].astype(float)})


def gradient_figure(frame: pd.DataFrame, metric: str, labels: Sequence[str], runs: Sequence[str], *,
                    by_module: bool = False, log_y: bool = True, max_steps: int = 500) -> go.Figure:
    """``metric`` over step for the chosen tensors (or modules), one line per (run, label)."""
    series = gradient_series(frame, metric, by_module)
    series = series[series["run"].isin(runs) & series["label"].isin(labels)]
    series = series[np.isfinite(series["value"])]
    if series.empty:
        return empty_figure("No gradient statistics: the checkpoints hold no Adam or SGD-momentum state "
                            "for the chosen tensors")
    fig = go.Figure()
    for i, ((run, group, label), s) in enumerate(series.groupby(["run", "group", "label"], sort=False)):
        s = s.sort_values("step")
        s = s[s["step"].isin(decimate_steps(s["step"].dropna(), max_steps))]
        name = tensor_label(group, label) + (f" ({run})" if len(runs) > 1 else "")
        fig.add_trace(go.Scatter(x=s["step"], y=s["value"], mode="lines+markers", name=name, marker={"size": 4},
                                 line={"color": series_color(i)},
                                 hovertemplate=f"{name}<br>step %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=GRADIENT_METRICS[metric], xaxis_title="step", yaxis_title=metric, height=460,
                      hovermode="closest", legend={"font": {"size": 10}})
    fig.update_yaxes(type="log" if log_y else "linear")
    fig.add_annotation(text=APPROXIMATION, xref="paper", yref="paper", x=0, y=-0.22, showarrow=False,
                       align="left", font={"size": 10}, xanchor="left")
    fig.update_layout(margin={"b": 110})
    return fig


def grad_rms_histogram_figure(frame: pd.DataFrame, run: str, group: str, name: str,
                              checkpoints: pd.DataFrame | None = None, **kw) -> go.Figure:
    """Histograms of √v̂ of one tensor over training (the Histograms view's drawing, on the gradients table;
    ``checkpoints``, the checkpoints table, places a run without steps)."""
    if frame is None or frame.empty:
        return empty_figure("No gradient statistics")
    if checkpoints is None:
        checkpoints = pd.DataFrame({"run": frame["run"], "checkpoint": frame["checkpoint"], "step": frame["step"]})
    fig = histogram_figure(SimpleNamespace(histograms=frame, checkpoints=checkpoints), run, group, name, **kw)
    fig.update_layout(title=f"{tensor_label(group, name)} — √v̂ per element ({run})", xaxis_title="√v̂")
    return fig
