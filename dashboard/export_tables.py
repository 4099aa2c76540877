"""Writing the statistics tables to files, one writer per format, looked up in one registry.

``csv`` writes ``stats.csv`` (the tensors table), ``updates.csv``, ``batchnorm.csv``, ``events.csv``,
``checkpoints.csv``, ``errors.csv``, ``spectral.csv`` and ``gradients.csv`` (without its √v̂ histogram lists), columns
exactly as in :mod:`ckptboard.core.schema`; ``parquet`` writes the same tables (lists included) plus
``histograms.parquet``. ``html`` and ``png`` go through :func:`ckptboard.dashboard.report.
write_report`; ``tensorboard`` through :func:`ckptboard.dashboard.export_tensorboard.write_tensorboard`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from ckptboard.core.atomic import atomic_write
from ckptboard.core.errors import UsageError
from ckptboard.core.records import StrEnum
from ckptboard.core.schema import COLUMNS, StatsTables, TableName

__all__ = ["ExportFormat", "TABLE_FILES", "parse_formats", "export_tables"]


class ExportFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    HTML = "html"
    PNG = "png"
    TENSORBOARD = "tensorboard"


# table -> file stem; histograms are lists per row, so only the parquet writer carries them.
TABLE_FILES: dict[TableName, str] = {
    TableName.TENSORS: "stats",
    TableName.UPDATES: "updates",
    TableName.BATCHNORM: "batchnorm",
    TableName.EVENTS: "events",
    TableName.CHECKPOINTS: "checkpoints",
    TableName.ERRORS: "errors",
    TableName.HISTOGRAMS: "histograms",
    TableName.TRAINING_SCALARS: "training_scalars",
    TableName.SPECTRAL: "spectral",
    TableName.GRADIENTS: "gradients",
}
_LIST_COLUMNS = ("lo", "hi", "counts")  # per-row histograms: Parquet only

Progress = Callable[[int, int, str], None]  # (done, total, what was just written)
Writer = Callable[[StatsTables, Path, Sequence[ExportFormat], "Progress | None"], list[Path]]
_WRITERS: dict[ExportFormat, Writer] = {}


def _writer(*formats: ExportFormat) -> Callable[[Writer], Writer]:
    """Register a writer for ``formats``; a format has exactly one writer."""

    def register(fn: Writer) -> Writer:
        for fmt in formats:
            if fmt in _WRITERS:
                raise ValueError(f"export format {fmt} already has a writer: {_WRITERS[fmt].__name__}")
            _WRITERS[fmt] = fn
        return fn

    return register


def parse_formats(text: str | Sequence[str]) -> tuple[ExportFormat, ...]:
    """``"csv,parquet"`` -> formats in the order given, duplicates dropped; :class:`UsageError` on anything else."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [item.strip().lower() for item in items if item.strip()]
    if not names:
        raise UsageError(f"--format: give at least one of {', '.join(f.value for f in ExportFormat)} (comma-separated)")
    formats: list[ExportFormat] = []
    for name in names:
        try:
            fmt = ExportFormat(name)
        except ValueError:
            raise UsageError(f"--format {name}: unknown; choose from {', '.join(f.value for f in ExportFormat)}")
        if fmt not in formats:
            formats.append(fmt)
    return tuple(formats)


def export_tables(tables: StatsTables, out_dir: str | Path, formats: Sequence[str],
                  progress: Progress | None = None) -> list[Path]:
    """Write ``tables`` under ``out_dir`` in every format; returns the files written."""
    formats = parse_formats(list(formats))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from e
    written: list[Path] = []
    by_writer: dict[Writer, list[ExportFormat]] = {}
    for fmt in formats:
        by_writer.setdefault(_WRITERS[fmt], []).append(fmt)
    for writer, group in by_writer.items():
        written += writer(tables, out, group, progress)
    return written


@_writer(ExportFormat.CSV)
def _write_csv(tables: StatsTables, out: Path, formats, progress: Progress | None) -> list[Path]:
    return _write_each(tables, out, "csv", lambda frame, path: atomic_write(path, lambda f: frame.to_csv(f, index=False)), progress)


@_writer(ExportFormat.PARQUET)
def _write_parquet(tables: StatsTables, out: Path, formats, progress: Progress | None) -> list[Path]:
    return _write_each(tables, out, "parquet", lambda frame, path: atomic_write(path, lambda f: frame.to_parquet(f, index=False)), progress)


@_writer(ExportFormat.HTML, ExportFormat.PNG)
def _write_report(tables: StatsTables, out: Path, formats, progress: Progress | None) -> list[Path]:
    from ckptboard.dashboard.report import write_report  # plotly is imported only when a report is asked for

    result = write_report(tables, out, [str(f) for f in formats], progress=progress)
    return list(result.files)


@_writer(ExportFormat.TENSORBOARD)
def _write_tensorboard(tables: StatsTables, out: Path, formats, progress: Progress | None) -> list[Path]:
    from ckptboard.dashboard.export_tensorboard import write_tensorboard  # torch's SummaryWriter only when asked

    return write_tensorboard(tables, out, progress=progress)


def _write_each(tables: StatsTables, out: Path, suffix: str, write: Callable[[pd.DataFrame, Path], None],
                progress: Progress | None) -> list[Path]:
    names = [n for n in TABLE_FILES if suffix == "parquet" or n != TableName.HISTOGRAMS]
    written = []
    for i, name in enumerate(names, 1):
        path = out / f"{TABLE_FILES[name]}.{suffix}"
        columns = [c for c in COLUMNS[name] if suffix == "parquet" or c not in _LIST_COLUMNS]
        frame = getattr(tables, name).reindex(columns=columns)
        write(frame, path)
        written.append(path)
        if progress is not None:
            progress(i, len(names), path.name)
    return written

