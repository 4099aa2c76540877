"""Atomic file writes: a temp file in the target folder, fsync, then rename.

Readers and concurrent writers only ever see a complete file; a crash leaves at most a hidden temp file. The result
gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the umask), not mkstemp's ``0o600``,
so a cache or report written by one user stays readable by the team.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["TMP_PREFIX", "DIR_MODE", "atomic_write"]

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()  # for folders made with mkdtemp (0o700) and renamed into place


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a binary temp file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
