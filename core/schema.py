"""Column contracts of the statistics tables: the cache writes them, ``load_stats`` returns them, the dashboard
and the export read them. Changing a name here is a breaking change of the export's CSV contract.

Every table has ``run`` (the run's folder relative to ROOT, ``"."`` for ROOT itself) and ``checkpoint`` (the
checkpoint's path relative to ROOT, POSIX separators) so that rows join across tables.
"""

from __future__ import annotations

__all__ = [
    "PERCENTILES",
    "PERCENTILE_COLUMNS",
    "CHECKPOINT_COLUMNS",
    "TENSOR_COLUMNS",
    "HISTOGRAM_COLUMNS",
    "UPDATE_COLUMNS",
    "BATCHNORM_COLUMNS",
    "EVENT_COLUMNS",
    "ERROR_COLUMNS",
    "percentile_column",
]

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

# One row per tensor per checkpoint: the distribution; ``edges`` has len(counts) + 1 floats.
HISTOGRAM_COLUMNS: tuple[str, ...] = ("run", "checkpoint", "step", "group", "name", "edges", "counts")

# Between consecutive checkpoints of a run, per tensor present in both with the same shape.
UPDATE_COLUMNS: tuple[str, ...] = (
    "run", "checkpoint", "step", "prev_checkpoint", "prev_step", "group", "name", "module", "kind",
    "update_norm", "update_ratio", "cosine", "dist_from_first", "rel_dist_from_first",
)

# Long format: one row per channel of a norm layer's running statistics per checkpoint.
BATCHNORM_COLUMNS: tuple[str, ...] = (
    "run", "checkpoint", "step", "group", "module", "channel", "running_mean", "running_var",
)

# Tensors added, removed or reshaped between consecutive checkpoints of a run.
EVENT_COLUMNS: tuple[str, ...] = ("run", "checkpoint", "step", "group", "name", "event", "detail")

# One row per file that could not be summarised.
ERROR_COLUMNS: tuple[str, ...] = ("run", "checkpoint", "error", "message")
