"""The server process: shared reads within a byte budget (least recently used dropped first), Arrow on the C
library's heap in the process ``serve`` starts, freed heap handed back after each page, and the first page's modules
imported before the server answers, without torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa

from ckptboard.dashboard.state import _SharedReads, give_back_freed_memory


def _ints(n: int) -> pa.Table:
    return pa.table({"x": pa.array(range(n), pa.int64())})  # 8 bytes a row, no nulls: nbytes = 8 n


def test_shared_reads_stay_within_their_budget_least_recently_used_first():
    reads = _SharedReads(budget=8 * 100)
    calls = []

    def read(n):
        return lambda: calls.append(n) or _ints(n)

    first = reads.get(("a",), read(60))  # 480 bytes
    reads.get(("b",), read(30))  # 240: 720 kept
    assert reads.get(("a",), read(60)) is first and calls == [60, 30]  # a hit reads nothing; a is now the newest
    reads.get(("c",), read(50))  # 400: 1,120 > 800, so b (least recently used) goes: a + c = 880, still over: a goes
    assert list(reads.frames) == [("c",)]
    big = reads.get(("d",), read(120))  # 960 > 800: handed over, not kept
    assert len(big) == 120 and list(reads.frames) == [("c",)]


def test_freed_memory_is_given_back_without_error():
    give_back_freed_memory()  # glibc's malloc_trim here; a no-op where there is none


def test_serve_process_allocates_arrow_from_the_c_heap():
    """``ckptboard serve``'s process (``launch``) picks Arrow's system pool before pyarrow is imported."""
    code = ("import streamlit.web.cli as cli\n"
            "cli.main = lambda **kw: print(__import__('pyarrow').default_memory_pool().backend_name)\n"
            "from ckptboard.dashboard import launch\n"
            "launch.main()\n")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "system", done.stderr


def test_serve_warms_the_first_page_without_torch():
    """What ``serve`` imports before answering (the first page's modules included) leaves torch for later."""
    code = ("import importlib, sys\n"
            "from ckptboard.dashboard.launch import WARM_IMPORTS\n"
            "[importlib.import_module(name) for name in WARM_IMPORTS]\n"
            "print(sorted({'torch', 'numba', 'ckptboard.dashboard.views.overview'} & set(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "['ckptboard.dashboard.views.overview']", done.stderr
