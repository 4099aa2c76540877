"""BatchNorm view: running statistics per layer over training, a channel × step heatmap, num_batches_tracked."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from ckptboard.core.schema import StatsTables

__all__ = ["batchnorm_layers_figure", "batchnorm_heatmap", "num_batches_tracked_figure"]


def batchnorm_layers_figure(
    tables: StatsTables,
    run: str,
    stat: str = "running_mean",
    *,
    modules: Sequence[str] | None = None,
    small_multiples: bool | None = None,
) -> go.Figure:
    """Channel mean of ``stat`` per layer over step with the channel min–max as a band."""
    raise NotImplementedError


def batchnorm_heatmap(tables: StatsTables, run: str, module: str, stat: str = "running_mean") -> go.Figure:
    """Channel × step heatmap of ``stat`` for one norm layer."""
    raise NotImplementedError


def num_batches_tracked_figure(tables: StatsTables, run: str) -> go.Figure:
    """``num_batches_tracked`` over step, one line per norm layer."""
    raise NotImplementedError
