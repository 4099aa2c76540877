"""Checks of user input that need no torch, pandas or pyarrow: the commands run them at the boundary, before any
heavy import, so that a bad argument is answered at once (``ckptboard size missing.pt`` in ~0.1 s, not ~2 s)."""

from __future__ import annotations

from pathlib import Path

from ckptboard.core.errors import NotACheckpointError, UsageError

__all__ = ["existing_path", "check_depth"]


def existing_path(path: str | Path) -> Path:
    """``path`` as a :class:`Path`; :class:`NotACheckpointError` when there is no such file or folder."""
    path = Path(path)
    if not path.exists():
        raise NotACheckpointError(path, "no such file or folder")
    return path


def check_depth(depth: int | None) -> None:
    """``--depth`` is 0 (the root only) or more, or absent (every depth)."""
    if depth is not None and depth < 0:
        raise UsageError(f"--depth {depth}: must be 0 (the whole model only) or more")
