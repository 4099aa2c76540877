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
from typing import Any

import torch

from ckptboard.core.errors import ChangedWhileReadError

__all__ = ["GuardedFile"]

_CHUNK = 1 << 30  # Linux moves at most ~2 GiB per read call
_SPARES = 2


class GuardedFile:
    """One open file read by absolute offsets; ``file`` is also usable as an ordinary binary file object."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "rb")
        self._stamp = self._now()
        self.size = self._stamp[0]
        self._spares: list[Any] = []  # numpy views of uninitialised memory

    def read_at(self, offset: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` from ``offset`` as a uint8 tensor the caller owns until it drops it.

        The bytes land in one of two spare buffers kept by this file, reused once no tensor refers to it (a caller
        usually holds the previous tensor while loading the next); a fresh buffer costs a page fault per page.
        """
        if not nbytes:
            return torch.empty(0, dtype=torch.uint8)
        buffer = self._spare_buffer(nbytes)
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

    def _spare_buffer(self, nbytes: int) -> Any:
        """A free spare of at least ``nbytes`` (uninitialised memory), replacing the smallest free one if needed."""
        # 2 references = the list's and getrefcount's argument; a tensor made by torch.frombuffer holds another
        free = [i for i in range(len(self._spares)) if sys.getrefcount(self._spares[i]) == 2]
        fits = [i for i in free if len(self._spares[i]) >= nbytes]
        if fits:
            return self._spares[fits[0]]
        buffer = torch.empty(nbytes, dtype=torch.uint8).numpy()
        if len(self._spares) < _SPARES:
            self._spares.append(buffer)
        elif free:
            self._spares[min(free, key=lambda i: len(self._spares[i]))] = buffer
        return buffer

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
        self._spares.clear()  # tensors still holding a spare keep it alive
        self.file.close()

    def _now(self) -> tuple[int, int, int]:
        st = os.fstat(self.file.fileno())
        return st.st_size, st.st_mtime_ns, st.st_ino
