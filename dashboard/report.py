"""The batch report: every view's figures for every run written to ``index.html`` (and PNGs with kaleido)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptboard.core.schema import StatsTables

__all__ = ["ReportResult", "write_report"]


@dataclass
class ReportResult:
    """What ``write_report`` wrote and what it had to leave out."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    n_figures: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per format/figure left out, with the reason


def write_report(
    tables: StatsTables,
    out_dir: str | Path,
    formats: Sequence[str] = ("html",),
    *,
    progress: Callable[[int, int, str], None] | None = None,
    size_trees: Mapping[str, Any] | None = None,
    flop_reports: Mapping[str, Any] | None = None,
) -> ReportResult:
    """Write the report in ``formats`` ("html", "png") under ``out_dir``; ``progress(done, total, title)`` per figure."""
    raise NotImplementedError
