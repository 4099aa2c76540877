"""What every per-format reader offers :mod:`ckptboard.core.reader` (one file; a Hugging Face folder holds several)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ckptboard.core.formats.safe_unpickle import LazyTensor

__all__ = ["FileReader"]


class FileReader:
    """Base of the format readers: ``read_root`` lists, ``materialise`` reads one tensor, ``close`` releases.

    ``label`` prefixes storage keys (the shard's file name in a Hugging Face folder, else empty); ``notes`` and
    ``skipped_globals`` are shown with the checkpoint; ``metadata`` is format-level metadata (safetensors header).
    """

    is_torchscript = False

    def __init__(self, path: Path, label: str = ""):
        self.path, self.label = path, label
        self.notes: list[str] = []
        self.skipped_globals: list[str] = []
        self.metadata: dict[str, Any] = {}

    def read_root(self) -> Any:
        """The file's object tree with :class:`LazyTensor` leaves (no tensor data read)."""
        raise NotImplementedError

    def materialise(self, lazy: LazyTensor, device: torch.device) -> torch.Tensor:
        """One tensor of this file on ``device``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files; tensors already materialised stay valid."""
