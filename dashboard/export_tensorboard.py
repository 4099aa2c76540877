"""``export --format tensorboard``: the statistics tables as TensorBoard event files, one folder per run.

``DIR/tensorboard/<run>/events.out.tfevents.*`` (run ``.`` is ``DIR/tensorboard/`` itself), written with
``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package); ``tensorboard --logdir DIR/tensorboard``
opens them. Earlier event files in those folders are replaced. Step = the checkpoint's step (its index in the run
when it has none); wall time = the checkpoint file's mtime.

- Histograms, tag ``<tensor>`` under TensorBoard's Histograms tab: our bins exactly (``add_histogram_raw``): each bin
  ``[lo, hi]`` becomes a bucket ending at ``hi``, a gap between bins an empty bucket ending at the next ``lo``;
  ``min``/``max``/``num``/``sum``/``sum_squares`` from the tensor's statistics (finite values).
- Scalars, tag ``<statistic>/<tensor>``: every column of :data:`TENSOR_SCALARS` of the tensors table, of
  :data:`UPDATE_SCALARS` of the updates table, and ``<table>/<statistic>/<tensor>`` of the tables in
  :data:`EXTRA_SCALARS` that the cache holds (spectral health, gradients from optimizer state, with histograms of
  √v̂ under ``gradients/<tensor>``).
- Training scalars (the ``training_scalars`` table, when the trainer logged any): under their own names, at the
  steps they were logged at.
- Tensor names: ``group:name`` when the group is not empty, as in the dashboard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ckptboard.core.errors import UsageError
from ckptboard.core.schema import tensor_label

__all__ = ["write_tensorboard", "TENSOR_SCALARS", "UPDATE_SCALARS", "EXTRA_SCALARS", "ExtraTable", "run_folder"]

TENSOR_SCALARS: tuple[str, ...] = ("norm", "mean", "std", "min", "max", "abs_mean", "zeros", "nans", "infs")
UPDATE_SCALARS: tuple[str, ...] = ("update_ratio", "update_norm", "cosine", "rel_dist_from_first")


@dataclass(frozen=True)
class ExtraTable:
    """A table written as scalars when the cache holds it: its value columns, the column naming each series, and
    whether its rows carry histograms (``lo``/``hi``/``counts``)."""

    columns: tuple[str, ...]
    key: str
    histograms: bool = False


EXTRA_SCALARS: dict[str, ExtraTable] = {
    "spectral": ExtraTable(("sigma_max", "stable_rank", "alpha"), "name"),
    "gradients": ExtraTable(("grad_rms", "m_norm", "update_norm", "update_ratio"), "name", histograms=True),
}

Progress = Callable[[int, int, str], None]


def run_folder(out: Path, run: str) -> Path:
    """The folder of ``run``'s event files under ``out``."""
    return out if run in (".", "") else out / run


def write_tensorboard(tables: Any, out_dir: str | Path, progress: Progress | None = None) -> list[Path]:
    """Write every run of ``tables`` (a :class:`StatsTables`) as event files under ``out_dir/tensorboard``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch's writer needs the tensorboard package
        raise UsageError("--format tensorboard needs the tensorboard package: pip install tensorboard") from e
    root = Path(out_dir) / "tensorboard"
    checkpoints = tables.checkpoints
    runs = sorted(set(checkpoints["run"])) if len(checkpoints) else []
    steps = _steps(checkpoints)
    written: list[Path] = []
    for i, run in enumerate(runs, 1):
        folder = run_folder(root, run)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        writer = SummaryWriter(log_dir=str(folder))
        try:
            _write_run(writer, tables, run, steps)
        finally:
            writer.close()
        written += sorted(folder.glob("events.out.tfevents.*"))
        if progress is not None:
            progress(i, len(runs), str(folder))
    return written


def _steps(checkpoints: pd.DataFrame) -> dict[str, tuple[int, float]]:
    """checkpoint -> (global step, wall time): its step, else its index in the run's order."""
    out: dict[str, tuple[int, float]] = {}
    for _, frame in checkpoints.groupby("run", sort=False):
        frame = frame.sort_values(["step", "mtime"], na_position="last", kind="stable")
        for index, row in enumerate(frame.itertuples()):
            step = int(row.step) if _finite(row.step) else index
            out[row.checkpoint] = (step, float(row.mtime) if _finite(row.mtime) else 0.0)
    return out


def _write_run(writer, tables: Any, run: str, steps: dict[str, tuple[int, float]]) -> None:
    tensors = _of_run(tables.tensors, run)
    moments = {(r.checkpoint, r.group, r.name): r for r in tensors.itertuples()}
    for row in _of_run(tables.histograms, run).itertuples():
        stats = moments.get((row.checkpoint, row.group, row.name))
        if stats is None or row.checkpoint not in steps:
            continue
        _histogram(writer, _label(row.group, row.name), row.lo, row.hi, row.counts, stats, *steps[row.checkpoint])
    _scalars(writer, tensors, TENSOR_SCALARS, steps, lambda r: _label(r["group"], r["name"]))
    _scalars(writer, _of_run(tables.updates, run), UPDATE_SCALARS, steps, lambda r: _label(r["group"], r["name"]))
    for table, spec in EXTRA_SCALARS.items():
        frame = getattr(tables, table, None)
        if frame is None or not len(frame) or spec.key not in frame.columns:
            continue
        frame = _of_run(frame, run)
        label = (lambda r: _label(r["group"], r[spec.key])) if "group" in frame.columns else (lambda r: str(r[spec.key]))
        _scalars(writer, frame, [c for c in spec.columns if c in frame.columns], steps, label, prefix=f"{table}/")
        if spec.histograms and {"lo", "hi", "counts"} <= set(frame.columns):
            for r in frame.to_dict("records"):
                if r["checkpoint"] in steps and len(r["counts"]):
                    _histogram(writer, f"{table}/{label(r)}", r["lo"], r["hi"], r["counts"], None,
                               *steps[r["checkpoint"]])
    _training_scalars(writer, getattr(tables, "training_scalars", None), run, steps)


def _training_scalars(writer, frame: pd.DataFrame | None, run: str, steps: dict[str, tuple[int, float]]) -> None:
    """What the trainer logged (the training_scalars table), under its own names and at its own steps."""
    if frame is None or not len(frame) or not {"name", "value", "step"} <= set(frame.columns):
        return
    for r in _of_run(frame, run).to_dict("records"):
        if _finite(r["value"]) and _finite(r["step"]):
            wall = steps.get(r["checkpoint"], (0, 0.0))[1]
            writer.add_scalar(str(r["name"]), float(r["value"]), global_step=int(r["step"]), walltime=wall)


def _of_run(frame: pd.DataFrame, run: str) -> pd.DataFrame:
    return frame[frame["run"] == run] if len(frame) else frame


def _scalars(writer, frame: pd.DataFrame, columns, steps, label, prefix: str = "") -> None:
    if not len(frame):
        return
    for r in frame.to_dict("records"):
        if r["checkpoint"] not in steps:
            continue
        step, wall = steps[r["checkpoint"]]
        name = label(r)
        for column in columns:
            value = r.get(column)
            if _finite(value):
                writer.add_scalar(f"{prefix}{column}/{name}", float(value), global_step=step, walltime=wall)


def _histogram(writer, tag: str, lo, hi, counts, stats, step: int, wall: float) -> None:
    lo, hi, counts = (np.asarray(x, dtype=np.float64) for x in (lo, hi, counts))
    if not counts.size or counts.sum() <= 0:
        return
    limits, buckets = [], []
    for i in range(counts.size):
        if i == 0 or lo[i] > hi[i - 1]:
            limits.append(lo[i])  # the empty stretch before this bin (TensorBoard's buckets run up to their limit)
            buckets.append(0.0)
        limits.append(hi[i])
        buckets.append(counts[i])
    num = float(counts.sum())
    if stats is not None and _finite(stats.mean) and _finite(stats.norm):
        vmin, vmax, total, squares = float(stats.min), float(stats.max), float(stats.mean) * num, float(stats.norm) ** 2
    else:  # no exact moments (a derived histogram): from the bin centres
        centres = (lo + hi) / 2
        vmin, vmax = float(lo[0]), float(hi[-1])
        total, squares = float(np.dot(centres, counts)), float(np.dot(centres * centres, counts))
    writer.add_histogram_raw(tag, min=vmin, max=vmax, num=num, sum=total, sum_squares=squares,
                             bucket_limits=limits, bucket_counts=buckets, global_step=step, walltime=wall)


def _label(group: Any, name: Any) -> str:
    return tensor_label(group if isinstance(group, str) else "", str(name))


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
