"""The cycle collector is kept off long-lived objects in worker processes and in the ckptboard command only; the
main process of anything else (app, notebook, tests) is left alone."""

from __future__ import annotations

import gc
import multiprocessing
import subprocess
import sys

from ckptboard.core.gcfreeze import freeze_in_worker, freeze_short_lived


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


def test_only_the_ckptboard_command_freezes_its_main_process(tmp_path):
    probe = ("import gc\nfrom ckptboard.core.gcfreeze import freeze_short_lived\nbefore = gc.get_freeze_count()\n"
             "freeze_short_lived()\nprint(gc.get_freeze_count() > before)\n")
    script = tmp_path / "ckptboard"  # as the console script is named
    script.write_text(probe)
    other = tmp_path / "notebook.py"
    other.write_text(probe)
    frozen = [subprocess.run([sys.executable, str(p)], capture_output=True, text=True, timeout=120).stdout.strip()
              for p in (script, other)]
    assert frozen == ["True", "False"]
    before = gc.get_freeze_count()
    freeze_short_lived()  # pytest's own process: left alone
    assert gc.get_freeze_count() == before
