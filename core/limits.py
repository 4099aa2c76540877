"""What one summarising worker may use: address space and wall-clock time per checkpoint.

A hostile file (a pickle whose memo inflates, a zip bomb, a structure that takes forever to walk) must end as a
recorded :class:`~ckptboard.core.errors.ResourceLimitError` row, not as a dashboard server or a pool taken down, nor
as a hang that every re-run repeats. The parent enforces the time (it kills the worker); the worker enforces the
memory on itself with ``RLIMIT_AS`` (no cgroup needed), lifted again before the failure is written.

Defaults, and why:

- memory: the worker's address space at the start of the task + the sizes of the files it opens (they may be
  mapped, and a legacy storage is read into memory) + ``DEFAULT_MAX_MEMORY`` (2 GiB). The statistics' working set is
  bounded (16 MiB chunks, ~50 MiB measured on a 4 GB checkpoint) and metadata of a million tensors is a few hundred
  MB, so 2 GiB beyond the files is an order of magnitude of slack for an honest file, and well below the memory of
  any machine that trains models.
- time: ``DEFAULT_TIMEOUT_S`` (120 s) + one second per ``TIMEOUT_BYTES_PER_S`` (20 MB) of the checkpoint: statistics
  run at ~1 GB/s per core, so an honest file needs a fiftieth of that even from a slow disk; a fixed figure would
  either kill an honest 100 GB checkpoint or let a 2 KB hang run for hours.

``--max-memory SIZE`` / ``--timeout S`` (or ``CKPTBOARD_MAX_MEMORY`` / ``CKPTBOARD_TIMEOUT``; ``0`` turns a limit
off) override them. With ``--device cuda`` no address-space limit is set: CUDA reserves far more address space than
it uses.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ckptboard.core.errors import ResourceLimitError, UsageError

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_BYTES_PER_S",
    "MEMORY_ENV",
    "TIMEOUT_ENV",
    "WorkerLimits",
    "parse_size",
    "install",
    "installed",
    "bounded_memory",
]

DEFAULT_MAX_MEMORY = 2 << 30
DEFAULT_TIMEOUT_S = 120.0
TIMEOUT_BYTES_PER_S = 20_000_000
MEMORY_ENV = "CKPTBOARD_MAX_MEMORY"
TIMEOUT_ENV = "CKPTBOARD_TIMEOUT"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class WorkerLimits:
    """Per-task limits of a worker: ``max_memory`` bytes of address space beyond its start and its files (None: no
    limit); ``timeout`` seconds (None: scaled by the checkpoint's size; 0: no limit)."""

    max_memory: int | None = DEFAULT_MAX_MEMORY
    timeout: float | None = None

    @classmethod
    def from_options(cls, max_memory: str | None = None, timeout: str | float | None = None) -> WorkerLimits:
        """The limits from ``--max-memory``/``--timeout`` text, else the environment, else the defaults."""
        memory_text = max_memory if max_memory is not None else os.environ.get(MEMORY_ENV)
        timeout_text = timeout if timeout is not None else os.environ.get(TIMEOUT_ENV)
        memory = DEFAULT_MAX_MEMORY if memory_text is None else (parse_size(str(memory_text)) or None)
        return cls(memory, None if timeout_text is None else _parse_seconds(str(timeout_text)))

    def seconds_for(self, nbytes: int) -> float | None:
        """The wall-clock limit of a task reading ``nbytes``; None when there is none."""
        if self.timeout is None:
            return DEFAULT_TIMEOUT_S + nbytes / TIMEOUT_BYTES_PER_S
        return self.timeout or None

    def record(self) -> dict[str, float | int | None]:
        """These limits as a cache header stores them beside a failure they caused."""
        return {"max_memory": self.max_memory, "timeout": self.timeout}

    def allow_more_than(self, recorded: dict, nbytes: int) -> bool:
        """Whether these limits are larger than ``recorded`` (:meth:`record`) in memory or in time for a checkpoint
        of ``nbytes``: a checkpoint that failed under ``recorded`` is worth reading again under these."""
        before = WorkerLimits(recorded.get("max_memory"), recorded.get("timeout"))
        return _more(self.max_memory, before.max_memory) or _more(self.seconds_for(nbytes), before.seconds_for(nbytes))


def _more(now: float | None, before: float | None) -> bool:
    """Whether limit ``now`` allows more than ``before`` (None: no limit)."""
    return before is not None and (now is None or now > before)


def parse_size(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1.5g"``, ``"1073741824"`` -> bytes (binary units); :class:`UsageError` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise UsageError(f"--max-memory {text!r}: expected a size such as 4G, 512M or a number of bytes "
                         f"(0 for no limit)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses NaN
        raise UsageError(f"--timeout {text!r}: expected seconds per checkpoint (0 for no limit)")
    return seconds


# --- in the worker process --------------------------------------------------------------------------------------

_installed: WorkerLimits | None = None


def install(limits: WorkerLimits | None) -> None:
    """Make this process a limited worker: :func:`bounded_memory` applies ``limits`` from now on."""
    global _installed
    _installed = limits


def installed() -> WorkerLimits | None:
    """The limits of this worker process; None outside one."""
    return _installed


@contextmanager
def bounded_memory(path: Path, files_bytes: int, device: str = "cpu") -> Iterator[None]:
    """Within the block this worker's address space may grow by ``files_bytes`` + its ``max_memory``; going past it
    is a :class:`ResourceLimitError` for ``path``. Outside a limited worker (or on CUDA) it does nothing."""
    if _installed is None or not _installed.max_memory or not str(device).startswith("cpu"):
        yield
        return
    budget = files_bytes + _installed.max_memory
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + budget
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    except Exception as e:
        if not _out_of_memory(e):
            raise
        raise _over(path, budget) from e
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _out_of_memory(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is a refused allocation: Python's ``MemoryError``, torch's CPU allocator
    (a RuntimeError), a reader's failed mmap (ENOMEM, which a reader may report as a damaged file)."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, MemoryError) or any(text in str(error) for text in _ALLOCATION_REFUSED):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


_ALLOCATION_REFUSED = ("can't allocate memory", "Cannot allocate memory", "failed to map segment")


def _over(path: Path, budget: int) -> ResourceLimitError:
    amount = f"{budget / (1 << 30):.3g} GiB" if budget >= 1 << 30 else f"{budget / (1 << 20):.3g} MiB"
    return ResourceLimitError(path, f"needed more than {amount} of memory beyond the worker's start (the files' "
                                    f"sizes + --max-memory); raise --max-memory if you trust the file")


def _address_space() -> int:
    """This process's virtual memory size now (``VmSize``), what ``RLIMIT_AS`` counts."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()
