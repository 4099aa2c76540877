"""Compare view: two checkpoints side by side — tensors added, removed, reshaped, and the largest changes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

from ckptboard.core.schema import StatsTables

__all__ = ["CompareResult", "compare_checkpoints", "compare_figure"]


@dataclass
class CompareResult:
    """What changed from ``checkpoint_a`` to ``checkpoint_b``."""

    checkpoint_a: str
    checkpoint_b: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reshaped: list[tuple[str, str, str]] = field(default_factory=list)  # (name, shape in a, shape in b)
    changes: pd.DataFrame = field(default_factory=pd.DataFrame)


def compare_checkpoints(tables: StatsTables, checkpoint_a: str, checkpoint_b: str) -> CompareResult:
    """Tensors added/removed/reshaped and the relative change per common tensor, largest first."""
    raise NotImplementedError


def compare_figure(result: CompareResult, top: int = 20) -> go.Figure:
    """Horizontal bars of the ``top`` largest relative changes."""
    raise NotImplementedError
