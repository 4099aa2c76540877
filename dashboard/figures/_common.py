"""Helpers shared by the figure builders: step decimation, tensor selection, the colour ramp, empty figures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ckptboard.core.schema import StatsTables

__all__ = ["decimate_steps", "select_tensors", "empty_figure"]


def decimate_steps(steps: Sequence[int] | np.ndarray, max_points: int = 500) -> np.ndarray:
    """At most ``max_points`` of the sorted unique ``steps``, evenly spread, always keeping the first and last."""
    raise NotImplementedError


def select_tensors(
    tables: StatsTables,
    run: str | Sequence[str] | None = None,
    pattern: str | None = None,
    kinds: Sequence[str] | None = None,
    module: str | None = None,
    depth: int | None = None,
) -> pd.DataFrame:
    """Rows of ``tables.tensors`` matching run(s), a name regex, kinds and a module prefix; ``depth`` adds a
    ``module_group`` column (the module path cut to ``depth`` dotted parts)."""
    raise NotImplementedError


def empty_figure(message: str) -> go.Figure:
    """A blank figure carrying ``message`` as an annotation, for views with nothing to draw."""
    raise NotImplementedError
