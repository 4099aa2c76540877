"""Histograms view: TensorBoard's offset/overlay histograms on one common binning, and the distribution view."""

from __future__ import annotations

import plotly.graph_objects as go

from ckptboard.core.schema import StatsTables

__all__ = ["histogram_figure", "distribution_figure"]


def histogram_figure(
    tables: StatsTables,
    run: str,
    group: str,
    name: str,
    *,
    mode: str = "offset",
    bins: int = 60,
    max_steps: int = 50,
) -> go.Figure:
    """A tensor's histograms over training: ``offset`` (stacked, oldest at the back) or ``overlay``."""
    raise NotImplementedError


def distribution_figure(tables: StatsTables, run: str, group: str, name: str, *, max_steps: int = 500) -> go.Figure:
    """Percentile bands at TensorBoard's basis points (min–max, …) and the median line over step."""
    raise NotImplementedError
