"""The exceptions ckptboard raises, all under one base so that callers catch one thing.

    CkptboardError                  base: the CLI prints ``TypeName: message`` and exits 1
    ├── CheckpointError             one file (or folder) cannot be read; ``path`` names it
    │   ├── NotACheckpointError     empty, foreign (JSON, a zip that is no checkpoint), random bytes
    │   ├── CorruptCheckpointError  truncated, bad header, inconsistent records
    │   ├── UnsafeCheckpointError   needs code execution (pickled module, TorchScript, unknown
    │   │                           globals holding tensors): re-run with ``--trust``
    │   ├── IncompleteCheckpointError  still being written by a running job: retry later
    │   │   └── ChangedWhileReadError  truncated or rewritten in place while ckptboard read it
    │   └── ResourceLimitError      summarising it needs more memory or time than a worker may use
    ├── ModelSpecError              ``--model SPEC`` cannot be resolved or built
    ├── CacheError                  the stats cache cannot be read or written
    ├── FlopCountError              the model's forward fails on the given input shapes, on meta and on CPU
    └── UsageError                  bad user input caught at the boundary (paths, options)
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CkptboardError",
    "CheckpointError",
    "NotACheckpointError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "IncompleteCheckpointError",
    "ChangedWhileReadError",
    "ResourceLimitError",
    "ModelSpecError",
    "CacheError",
    "FlopCountError",
    "UsageError",
]


class CkptboardError(Exception):
    """Base of every error ckptboard raises on purpose."""


class CheckpointError(CkptboardError):
    """A checkpoint file or folder cannot be read; the message starts with its path."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class NotACheckpointError(CheckpointError):
    """The file is not a checkpoint in any format ckptboard reads."""


class CorruptCheckpointError(CheckpointError):
    """The file looks like a checkpoint but its content is damaged."""


class UnsafeCheckpointError(CheckpointError):
    """Reading the tensors would execute pickled code; allowed only with ``trust=True``."""


class IncompleteCheckpointError(CheckpointError):
    """The file is still being written (size/mtime changing or zip directory missing)."""


class ChangedWhileReadError(IncompleteCheckpointError):
    """The file shrank or was rewritten in place during a read (``: > last.ckpt``): retry once it is written."""


class ResourceLimitError(CheckpointError):
    """Summarising the file went past the worker's memory or time limit (``--max-memory``, ``--timeout``)."""


class ModelSpecError(CkptboardError):
    """A ``--model`` SPEC cannot be imported, found or built."""


class CacheError(CkptboardError):
    """The stats cache cannot be used."""


class FlopCountError(CkptboardError):
    """FLOPs cannot be counted: the forward fails on the given input shapes (the message names them)."""


class UsageError(CkptboardError):
    """Invalid user input, caught before any file is opened."""
