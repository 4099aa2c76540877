"""freeze_in_worker freezes in a worker process and leaves the main process (app, notebook, tests) alone."""

from __future__ import annotations

import gc
import multiprocessing

from ckptboard.core.gcfreeze import freeze_in_worker


def _frozen_after_freeze(queue) -> None:
    before = gc.get_freeze_count()
    freeze_in_worker()
    queue.put((before, gc.get_freeze_count()))


def test_the_main_process_is_not_frozen():
    before = gc.get_freeze_count()
    freeze_in_worker()
    assert gc.get_freeze_count() == before


def test_a_worker_process_freezes_what_is_alive():
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    worker = context.Process(target=_frozen_after_freeze, args=(queue,))
    worker.start()
    before, after = queue.get(timeout=120)
    worker.join(timeout=60)
    assert after > before  # a fresh interpreter holds thousands of tracked objects (its modules, at least)
