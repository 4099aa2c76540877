"""Overview view: the checkpoints of every run, their sizes and parameter counts, and an error card per bad file."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from ckptboard.core.schema import StatsTables

__all__ = ["checkpoints_table", "runs_overview_figure", "error_cards"]


def checkpoints_table(tables: StatsTables, run: str | None = None) -> pd.DataFrame:
    """The checkpoints of one run (or all), sorted by run and step, with display columns."""
    raise NotImplementedError


def runs_overview_figure(tables: StatsTables) -> go.Figure:
    """Checkpoint size and parameter count over step, one trace per run."""
    raise NotImplementedError


def error_cards(tables: StatsTables) -> list[dict]:
    """One ``{run, checkpoint, error, message}`` dict per file that could not be summarised."""
    raise NotImplementedError
