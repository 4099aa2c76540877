"""The one registry of the statistics tables: their names (:class:`TableName`), columns, Arrow types and the cache's
:data:`FORMAT_VERSION`. The cache writes them, ``load_stats`` returns them, the dashboard and the export read them.
Changing a name here is a breaking change of the export's CSV contract; changing a column or a type needs a new
``FORMAT_VERSION``.

Every table has ``run`` (the run's folder relative to ROOT, ``"."`` for ROOT itself) and ``checkpoint`` (the
checkpoint's path relative to ROOT, POSIX separators) so that rows join across tables.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from ckptboard.core.records import StrEnum

if TYPE_CHECKING:  # pandas costs ~0.5 s and pyarrow ~0.1 s to import: only the functions that use them import them
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "FORMAT_VERSION",
    "TableName",
    "COLUMNS",
    "arrow_schema",
    "PERCENTILES",
    "PERCENTILE_COLUMNS",
    "CHECKPOINT_COLUMNS",
    "TENSOR_COLUMNS",
    "HISTOGRAM_COLUMNS",
    "UPDATE_COLUMNS",
    "BATCHNORM_COLUMNS",
    "EVENT_COLUMNS",
    "ERROR_COLUMNS",
    "TRAINING_SCALAR_COLUMNS",
    "SPECTRAL_COLUMNS",
    "GRADIENT_COLUMNS",
    "percentile_column",
    "EventKind",
    "RunningStat",
    "tensor_label",
    "format_shape",
    "StatsTables",
]

# Bump when a table's columns or types change, or the cache layout: caches of another version are recomputed with a
# warning. 2: the training_scalars table; 3: one flat Parquet file per table per checkpoint (1 and 2: one file);
# 4: the spectral and gradients tables.
FORMAT_VERSION = 4


class TableName(StrEnum):
    """The statistics tables, in the order a cache fragment stores them."""

    CHECKPOINTS = "checkpoints"
    TENSORS = "tensors"
    HISTOGRAMS = "histograms"
    UPDATES = "updates"
    BATCHNORM = "batchnorm"
    EVENTS = "events"
    ERRORS = "errors"
    TRAINING_SCALARS = "training_scalars"
    SPECTRAL = "spectral"
    GRADIENTS = "gradients"


# TensorBoard's distribution basis points (its compressed-histogram bps), then the usual extras.
PERCENTILES: tuple[float, ...] = (0.0, 1.0, 5.0, 6.68, 15.87, 25.0, 30.85, 50.0, 69.15, 75.0, 84.13, 93.32, 95.0, 99.0, 100.0)


def percentile_column(q: float) -> str:
    """``p50``, ``p6_68``: the column holding percentile ``q``."""
    text = f"{q:g}".replace(".", "_")
    return f"p{text}"


PERCENTILE_COLUMNS: tuple[str, ...] = tuple(percentile_column(q) for q in PERCENTILES)

# One row per checkpoint file (or HF folder) that was read.
CHECKPOINT_COLUMNS: tuple[str, ...] = (
    "run", "checkpoint", "step", "step_source", "format", "size_bytes", "mtime",
    "n_tensors", "n_parameters", "n_trainable", "n_frozen", "n_buffers",
    "parameter_bytes", "buffer_bytes", "optimizer", "metadata_json", "skipped_globals",
)

# One row per model tensor per checkpoint (optimizer state never appears here).
TENSOR_COLUMNS: tuple[str, ...] = (
    "run", "checkpoint", "step", "group", "name", "raw_name", "module", "kind", "trainable", "source",
    "dtype", "shape", "numel", "nbytes", "tied_to",
    "mean", "std", "min", "max", "abs_mean", "norm", "zeros", "nans", "posinfs", "neginfs", "infs",
) + PERCENTILE_COLUMNS

# One row per tensor per checkpoint: the distribution of its finite values as sorted, non-overlapping bins
# [lo[i], hi[i]) holding counts[i] values (lists of equal length; empty bins may be left out). The dashboard
# re-bins them onto one common range across steps with ``ckptboard.core.histogram.rebin``.
HISTOGRAM_COLUMNS: tuple[str, ...] = ("run", "checkpoint", "step", "group", "name", "lo", "hi", "counts")

# Between consecutive checkpoints of a run, per tensor present in both with the same shape.
UPDATE_COLUMNS: tuple[str, ...] = (
    "run", "checkpoint", "step", "prev_checkpoint", "prev_step", "group", "name", "module", "kind",
    "update_norm", "update_ratio", "cosine", "dist_from_first", "rel_dist_from_first",
)

# Long format: one row per channel of a norm layer's running statistics per checkpoint.
BATCHNORM_COLUMNS: tuple[str, ...] = (
    "run", "checkpoint", "step", "group", "module", "channel", "running_mean", "running_var",
)


class RunningStat(StrEnum):
    """A norm layer's running-statistics buffers: the leaves of their names and columns of the batchnorm table."""

    RUNNING_MEAN = "running_mean"
    RUNNING_VAR = "running_var"

# Tensors added, removed or reshaped between consecutive checkpoints of a run (``event``: an :class:`EventKind`).
EVENT_COLUMNS: tuple[str, ...] = ("run", "checkpoint", "step", "group", "name", "event", "detail")


class EventKind(StrEnum):
    """The ``event`` column of the events table; ``detail`` says ``shape dtype`` or ``old shape -> new shape``."""

    ADDED = "added"
    REMOVED = "removed"
    RESHAPED = "reshaped"

# One row per file that could not be summarised.
ERROR_COLUMNS: tuple[str, ...] = ("run", "checkpoint", "error", "message")

# Training scalars logged beside the checkpoints (Trainer's log_history, Lightning's metrics.csv): one row per logged
# value; ``step`` is the step it was logged at, ``checkpoint`` the one whose fragment holds it (the first checkpoint
# at or after that step), ``source`` the log file's name.
TRAINING_SCALAR_COLUMNS: tuple[str, ...] = ("run", "checkpoint", "step", "source", "name", "value")


# Spectral health of each 2-D (or convolution) parameter per checkpoint, when summarised with --spectral
# (ckptboard.core.spectral): method "power" (sigma_max by power/Lanczos iteration) or "full" (the whole ESD, alpha);
# alpha_band is WeightWatcher's published label of alpha ("" without alpha).
SPECTRAL_COLUMNS: tuple[str, ...] = (
    "run", "checkpoint", "step", "group", "name", "module", "method", "n_matrices", "rows", "cols",
    "sigma_max", "stable_rank", "iterations", "n_evals", "alpha", "alpha_xmin", "alpha_ks", "alpha_sigma", "alpha_n",
    "alpha_band",
)

# Gradient statistics read back from the optimizer state in the checkpoint (ckptboard.core.gradients), one row per
# parameter with Adam (moments "adam") or SGD-momentum ("sgd-momentum") state; lo/hi/counts: histogram of sqrt(v_hat).
GRADIENT_COLUMNS: tuple[str, ...] = (
    "run", "checkpoint", "step", "optimizer", "param_id", "param_group", "group", "name", "module", "moments",
    "opt_step", "lr", "numel", "grad_rms", "grad_rms_max", "m_norm", "update_norm", "update_rms", "weight_norm",
    "update_ratio", "lo", "hi", "counts",
)


COLUMNS: dict[TableName, tuple[str, ...]] = {
    TableName.CHECKPOINTS: CHECKPOINT_COLUMNS,
    TableName.TENSORS: TENSOR_COLUMNS,
    TableName.HISTOGRAMS: HISTOGRAM_COLUMNS,
    TableName.UPDATES: UPDATE_COLUMNS,
    TableName.BATCHNORM: BATCHNORM_COLUMNS,
    TableName.EVENTS: EVENT_COLUMNS,
    TableName.ERRORS: ERROR_COLUMNS,
    TableName.TRAINING_SCALARS: TRAINING_SCALAR_COLUMNS,
    TableName.SPECTRAL: SPECTRAL_COLUMNS,
    TableName.GRADIENTS: GRADIENT_COLUMNS,
}

# Column types; a column not named here is a string.
_INT_COLUMNS = ("step", "prev_step", "numel", "nbytes", "zeros", "nans", "posinfs", "neginfs", "infs", "channel",
                "size_bytes", "n_tensors", "n_parameters", "n_trainable", "n_frozen", "n_buffers", "parameter_bytes",
                "buffer_bytes", "n_matrices", "rows", "cols", "iterations", "n_evals", "alpha_n", "param_group")
_FLOAT_COLUMNS = ("value", "mean", "std", "min", "max", "abs_mean", "norm", "update_norm", "update_ratio", "cosine",
                  "dist_from_first", "rel_dist_from_first", "running_mean", "running_var",
                  "mtime",  # seconds since the epoch, as os.stat gives
                  "sigma_max", "stable_rank", "alpha", "alpha_xmin", "alpha_ks", "alpha_sigma",
                  "opt_step", "lr", "grad_rms", "grad_rms_max", "m_norm", "update_rms", "weight_norm",
                  ) + PERCENTILE_COLUMNS
_FLOAT_LIST_COLUMNS = ("lo", "hi")
_INT_LIST_COLUMNS = ("counts",)


@functools.cache
def arrow_schema(table: TableName | str) -> pa.Schema:
    """The Arrow schema of ``table``: its columns in order, with their types."""
    import pyarrow as pa

    types = {
        **{c: pa.int64() for c in _INT_COLUMNS},
        **{c: pa.float64() for c in _FLOAT_COLUMNS},
        **{c: pa.list_(pa.float64()) for c in _FLOAT_LIST_COLUMNS},
        **{c: pa.list_(pa.int64()) for c in _INT_LIST_COLUMNS},
    }
    return pa.schema([pa.field(c, types.get(c, pa.string())) for c in COLUMNS[TableName(table)]])


def tensor_label(group: str, name: str) -> str:
    """A tensor's ``(group, name)`` as one label: ``name`` for the bare state_dict, ``group:name`` for a tensor inside
    a named group (e.g. ``ema:fc.weight``)."""
    return f"{group}:{name}" if group else name


def format_shape(shape) -> str:
    """``[64, 3, 3, 3]`` from the ``shape`` column's JSON text, a list, tuple or array; ``[]`` for a 0-d tensor."""
    import numpy as np
    import pandas as pd

    if isinstance(shape, str):
        try:
            shape = json.loads(shape.replace("(", "[").replace(")", "]").replace(",]", "]"))
        except ValueError:
            return shape
    if shape is None or (np.isscalar(shape) and pd.isna(shape)):
        return ""
    return "[" + ", ".join(str(int(d)) for d in np.asarray(shape).ravel()) + "]"


@dataclass
class StatsTables:
    """Everything ``load_stats`` returns: one DataFrame per table above (fields named as :class:`TableName`)."""

    checkpoints: pd.DataFrame
    tensors: pd.DataFrame
    histograms: pd.DataFrame
    updates: pd.DataFrame
    batchnorm: pd.DataFrame
    events: pd.DataFrame
    errors: pd.DataFrame
    training_scalars: pd.DataFrame
    spectral: pd.DataFrame = field(default_factory=lambda: _empty_frame(TableName.SPECTRAL))
    gradients: pd.DataFrame = field(default_factory=lambda: _empty_frame(TableName.GRADIENTS))

    @classmethod
    def empty(cls) -> "StatsTables":
        import pandas as pd

        return cls(**{f.name: pd.DataFrame(columns=list(COLUMNS[TableName(f.name)])) for f in fields(cls)})


def _empty_frame(table: TableName) -> pd.DataFrame:
    """An empty table with its columns (the default of a table added after the first seven)."""
    import pandas as pd

    return pd.DataFrame(columns=list(COLUMNS[table]))
