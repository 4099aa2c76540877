"""Reading byte ranges of a file that may change under us: ``pread`` into fresh buffers, never a mapping.

A mapping of a file that is truncated while read kills the process with SIGBUS (training scripts overwrite
``last.ckpt`` in place); a short ``pread`` is only a short read. The file's size, mtime and inode at open are the
reference: a short read, or a change seen after a read, is a :class:`ChangedWhileReadError` (retry later).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ckptboard.core.errors import ChangedWhileReadError

__all__ = ["GuardedFile"]

_CHUNK = 1 << 30  # Linux moves at most ~2 GiB per read call


class GuardedFile:
    """One open file read by absolute offsets; ``file`` is also usable as an ordinary binary file object."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "rb")
        self._stamp = self._now()
        self.size = self._stamp[0]

    def read_at(self, offset: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` from ``offset`` into a fresh uint8 tensor the caller owns (not zero-filled first)."""
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        if not nbytes:
            return buffer
        view, done = memoryview(buffer.numpy()), 0
        while done < nbytes:
            n = os.preadv(self.file.fileno(), [view[done : done + _CHUNK]], offset + done)
            if n == 0:
                break
            done += n
        if done < nbytes:
            raise ChangedWhileReadError(
                self.path, f"changed while read: {nbytes} bytes at offset {offset} were expected, the file ended first"
            )
        self.check()
        return buffer

    def changed(self) -> bool:
        """Whether size, mtime or inode differ from when the file was opened."""
        return self._now() != self._stamp

    def check(self) -> None:
        if self.changed():
            raise ChangedWhileReadError(self.path, "changed while read (size or mtime differs from when it was opened)")

    def close(self) -> None:
        self.file.close()

    def _now(self) -> tuple[int, int, int]:
        st = os.fstat(self.file.fileno())
        return st.st_size, st.st_mtime_ns, st.st_ino
