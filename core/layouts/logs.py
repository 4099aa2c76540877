"""Training scalars written beside checkpoints: Hugging Face ``trainer_state.json`` ``log_history`` and Lightning
CSVLogger's ``metrics.csv`` (in ``version_N/``, beside the ``checkpoints/`` folder, not inside it).

Each checkpoint contributes the scalars logged after the previous checkpoint's step and up to its own, so that the
checkpoints of a run together hold each logged value once and a checkpoint's share never changes after it is
written (values logged after the last checkpoint appear with the next one). Every numeric key is a scalar
(``loss``, ``learning_rate``, ``grad_norm``, ``eval_*``, ``train_runtime``; Lightning's logged names); ``step`` and
``epoch`` are the axis, and ``epoch`` is kept as a scalar too. Non-finite and non-numeric values are left out.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ScalarRow", "log_scalars", "log_file"]

_TRAINER_STATE = "trainer_state.json"
_METRICS = "metrics.csv"
_AXIS = {"step", "global_step"}


@dataclass
class ScalarRow:
    """One logged value: its step, name and the file it came from."""

    step: int
    name: str
    value: float
    source: str  # the log file's name: trainer_state.json, metrics.csv


def log_file(checkpoint: Path) -> Path | None:
    """The training log that belongs to ``checkpoint`` (a Trainer folder's state, Lightning's metrics.csv), if any."""
    if checkpoint.is_dir() and (checkpoint / _TRAINER_STATE).is_file():
        return checkpoint / _TRAINER_STATE
    folder = checkpoint.parent
    if checkpoint.is_file() and folder.name == "checkpoints" and (folder.parent / _METRICS).is_file():
        return folder.parent / _METRICS
    return None


def log_scalars(checkpoint: Path, step: int | None, prev_step: int | None) -> list[ScalarRow]:
    """The scalars logged at steps ``prev_step < s <= step`` (all up to ``step`` when ``prev_step`` is None)."""
    path = log_file(checkpoint)
    if path is None or step is None:
        return []
    low = -1 if prev_step is None else prev_step
    rows = _trainer_rows(path) if path.name == _TRAINER_STATE else _csv_rows(path)
    return [r for r in rows if low < r.step <= step]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _trainer_rows(path: Path) -> list[ScalarRow]:
    try:
        history = json.loads(path.read_text(encoding="utf-8")).get("log_history", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return []  # the layout reports a damaged trainer_state.json; the scalars are just missing
    rows = []
    for entry in history if isinstance(history, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
            continue
        for name, value in entry.items():
            number = _number(value) if name not in _AXIS and not isinstance(value, str) else None
            if number is not None:
                rows.append(ScalarRow(entry["step"], str(name), number, _TRAINER_STATE))
    return rows


def _csv_rows(path: Path) -> list[ScalarRow]:
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for record in csv.DictReader(f):
                step = _number(record.get("step"))
                if step is None or not step.is_integer():
                    continue
                for name, value in record.items():
                    number = _number(value) if name and name not in _AXIS else None
                    if number is not None:
                        rows.append(ScalarRow(int(step), name, number, _METRICS))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return rows
