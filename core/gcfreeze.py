"""Keeping the cycle collector off a worker's long-lived objects.

A fresh worker holds ~10^6 objects that live as long as it does (modules, torch's and numba's registries). CPython's
full collections walk every one of them, and a summarize sets off many: numba's import and registries, and each
checkpoint of thousands of tensors (records, rows). Measured here: a third of the CPU time of a metadata-heavy
summarize, ~0.2 s of a fresh process's start-up. ``gc.freeze`` moves what is alive to a generation no collection
walks. Only in worker processes (started by ``multiprocessing``, as every summarize worker is): in the main process
(the app, a notebook) an object frozen alive and dropped later would never be collected if it sits in a cycle.
"""

from __future__ import annotations

import gc
import multiprocessing

__all__ = ["freeze_in_worker"]


def freeze_in_worker() -> None:
    """In a worker process, freeze every object alive now (``gc.freeze``); elsewhere nothing."""
    if multiprocessing.parent_process() is not None:
        gc.freeze()
