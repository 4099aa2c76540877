"""Keeping the cycle collector off a worker's long-lived objects.

A fresh worker holds ~10^6 objects that live as long as it does (modules, torch's and numba's registries). CPython's
full collections walk every one of them, and a summarize sets off many: numba's import and registries, and each
checkpoint of thousands of tensors (records, rows). Measured here: a third of the CPU time of a metadata-heavy
summarize, ~0.2 s of a fresh process's start-up. ``gc.freeze`` moves what is alive to a generation no collection
walks. Only in worker processes (started by ``multiprocessing``, as every summarize worker is) and in a process that
is the ``ckptboard`` command itself (:func:`freeze_short_lived`): in a long-lived main process (the
app, a notebook) an object frozen alive and dropped later would never be collected if it sits in a cycle. Frozen
before the workers fork, the parent's objects are not walked (nor copied on write) by the workers' collections.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
from pathlib import Path

__all__ = ["freeze_in_worker", "freeze_short_lived"]


def freeze_in_worker() -> None:
    """In a worker process, freeze every object alive now (``gc.freeze``); elsewhere nothing."""
    if multiprocessing.parent_process() is not None:
        gc.freeze()


def freeze_short_lived() -> None:
    """Freeze every object alive now if this process is the ``ckptboard`` command itself (the console script, or
    ``python -m ckptboard…``), which exits when its work is done; called after its imports and before it forks
    workers (measured: ~0.2 s CPU of a whole-process summarize of 1 GB). A caller inside another program (tests
    calling the CLI's ``main``, the app) is left alone."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if (spec is not None and spec.name.startswith("ckptboard.")) or Path(sys.argv[0]).name == "ckptboard":
        gc.freeze()
