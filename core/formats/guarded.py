"""Reading byte ranges of a file that may change under us: ``pread`` into buffers of our own, never a mapping.

A mapping of a file that is truncated while read kills the process with SIGBUS (training scripts overwrite
``last.ckpt`` in place); a short ``pread`` is only a short read. The price is one copy of each tensor's bytes.
The file's size, mtime and inode at open are the reference: a short read, or a change seen after a read, is a
:class:`ChangedWhileReadError` (retry later).
"""

from __future__ import annotations

import os
import sys
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
        self._spare: bytearray | None = None

    def read_at(self, offset: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` from ``offset`` as a uint8 tensor the caller owns until it drops it.

        The bytes land in a spare buffer kept by this file and reused once no tensor refers to it any more (a fresh
        buffer costs a page fault and a zero-fill per page, several times the copy itself on large tensors).
        """
        if not nbytes:
            return torch.empty(0, dtype=torch.uint8)
        buffer = self._spare
        # 2 = the attribute and getrefcount's argument: a tensor made by torch.frombuffer holds one more
        if buffer is None or len(buffer) < nbytes or sys.getrefcount(buffer) > 2:
            buffer = bytearray(nbytes)
            if self._spare is None or len(self._spare) < nbytes:
                self._spare = buffer
        with memoryview(buffer) as view:
            done = 0
            while done < nbytes:
                n = os.preadv(self.file.fileno(), [view[done : min(nbytes, done + _CHUNK)]], offset + done)
                if n == 0:
                    break
                done += n
        if done < nbytes:
            raise ChangedWhileReadError(
                self.path, f"changed while read: {nbytes} bytes at offset {offset} were expected, the file ended first"
            )
        self.check()
        return torch.frombuffer(buffer, dtype=torch.uint8, count=nbytes)

    def read_small(self, offset: int, nbytes: int) -> bytes:
        """A few bytes (a header) at ``offset``; short when the file ends first."""
        return os.pread(self.file.fileno(), nbytes, offset)

    def changed(self) -> bool:
        """Whether size, mtime or inode differ from when the file was opened."""
        return self._now() != self._stamp

    def check(self) -> None:
        if self.changed():
            raise ChangedWhileReadError(self.path, "changed while read (size or mtime differs from when it was opened)")

    def close(self) -> None:
        self._spare = None  # tensors still holding it keep it alive
        self.file.close()

    def _now(self) -> tuple[int, int, int]:
        st = os.fstat(self.file.fileno())
        return st.st_size, st.st_mtime_ns, st.st_ino
