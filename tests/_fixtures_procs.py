"""Which processes hold a file: for tests that act while a worker reads it, or check that none still does."""

from __future__ import annotations

import os

__all__ = ["holders"]


def holders(path) -> list[str]:
    """PIDs of the processes that have ``path`` open or mapped (read from ``/proc``)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
        except OSError:
            continue
        if str(path) in fds or str(path) in maps:
            found.append(pid)
    return found
