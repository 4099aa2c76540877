"""First paint in headless Chromium, side by side with a bare Streamlit + Plotly app on the same machine.

For each of ``--repeats`` rounds, a fresh server of each app is started (``ckptboard serve`` on a summarised copy
of ``sample_ckpts``; the bare app is four lines: ``st.title``, one Plotly line chart, under ``streamlit run`` with
serve's flags). Timed from ``page.goto``: the first element on screen ("content") and the first Plotly chart
drawn, in a fresh server and then in a new tab of the same server; for ckptboard also every view switch (click
to the view drawn) and, on an empty cache, the time to the progress box and to the first chart. Also each fresh
server's start until it answers (``serve`` imports the page's libraries first), and start to first chart in all.
Medians (min–max).

Usage: ``python benchmarks/bench_first_paint.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
from test_serve_e2e import CHART_VIEWS, CHROMIUM, CHROMIUM_ARGS, _free_port, _wait_drawn  # noqa: E402

from bench_app import start_server  # noqa: E402

from ckptboard.dashboard.views import View  # noqa: E402

BARE_APP = """import plotly.graph_objects as go
import streamlit as st
st.title("bare")
st.plotly_chart(go.Figure(go.Scatter(y=[1, 3, 2])))
"""
FLAGS = ["--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
# Something the user can see in the main area: an element with a height (not an empty slot or a style tag).
CONTENT_JS = """() => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stElementContainer"]')]
                   .some(e => e.offsetHeight > 0)"""
CHART = ".js-plotly-plot .main-svg"
PROGRESS = '[data-testid="stExpander"], [data-testid="stStatusWidget"]'


def _serve_command(root: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "ckptboard.dashboard.cli", "serve", str(root), "--port", str(port)]


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)


def _open(browser, url: str, times: dict, prefix: str, extra: str | None = None):
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    page.set_default_timeout(120_000)
    start = time.perf_counter()
    page.goto(url)
    if extra:
        page.wait_for_selector(extra, state="attached")
        times[f"{prefix}: progress shown"] = time.perf_counter() - start
    page.wait_for_function(CONTENT_JS, polling="raf")
    times[f"{prefix}: content"] = time.perf_counter() - start
    page.wait_for_selector(CHART)
    times[f"{prefix}: first chart"] = time.perf_counter() - start
    return page


def one_round(browser, work: Path, samples: Path, bare: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    port = _free_port()
    start = time.perf_counter()
    proc, url = start_server([sys.executable, "-m", "streamlit", "run", str(bare), "--server.address", "127.0.0.1",
                              "--server.port", str(port), *FLAGS], port)  # fmt: skip
    times["bare, fresh server: server up"] = time.perf_counter() - start
    try:
        _open(browser, url, times, "bare, fresh server").close()
        _open(browser, url, times, "bare, new tab").close()
    finally:
        _stop(proc)
    port = _free_port()
    start = time.perf_counter()
    proc, url = start_server(_serve_command(samples, port), port)
    times["ckptboard, fresh server: server up"] = time.perf_counter() - start
    try:
        _open(browser, url, times, "ckptboard, fresh server").close()
        page = _open(browser, url, times, "ckptboard, new tab")
        _wait_drawn(page, View.OVERVIEW)
        for view in [*View][1:] + [View.OVERVIEW]:
            start = time.perf_counter()
            page.locator(".st-key-view button", has_text=str(view)).first.click()
            page.locator(".st-key-view button[aria-checked=true]", has_text=str(view)).wait_for()
            _wait_drawn(page, view)
            if view in CHART_VIEWS:
                page.wait_for_selector(CHART)
            times[f"switch to {view}"] = time.perf_counter() - start
        page.close()
    finally:
        _stop(proc)
    empty = work / f"empty-{time.monotonic_ns()}"
    shutil.copytree(REPO / "sample_ckpts", empty, ignore=shutil.ignore_patterns(".ckptboard", "__pycache__"))
    port = _free_port()
    proc, url = start_server(_serve_command(empty, port), port)
    try:
        _open(browser, url, times, "ckptboard, empty cache (48 files)", extra=PROGRESS).close()
    finally:
        _stop(proc)
        shutil.rmtree(empty)
    return times


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    from ckptboard.core.summarize import summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bare = work / "bare_app.py"
        bare.write_text(BARE_APP)
        samples = work / "samples"
        shutil.copytree(REPO / "sample_ckpts", samples, ignore=shutil.ignore_patterns(".ckptboard", "__pycache__"))
        summarize(samples)
        rounds = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for i in range(args.repeats):
                rounds.append(one_round(browser, work, samples, bare))
                print(f"round {i + 1}/{args.repeats} done", flush=True)
            browser.close()
    print(f"\nheadless Chromium, median of {len(rounds)} rounds (min–max), seconds from page.goto / click:")
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        print(f"  {name:<48} {statistics.median(values):6.2f}  ({min(values):.2f}–{max(values):.2f})")
    med = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    for what in ("fresh server", "new tab"):
        for stage in ("content", "first chart"):
            ratio = med[f"ckptboard, {what}: {stage}"] / med[f"bare, {what}: {stage}"]
            print(f"  ckptboard / bare, {what}, {stage}: {ratio:.2f}x")
    # serve imports the page's libraries before its server answers (dashboard/launch.py): count the start too
    totals = {app: statistics.median(r[f"{app}, fresh server: server up"] + r[f"{app}, fresh server: first chart"]
                                     for r in rounds) for app in ("bare", "ckptboard")}
    print(f"  server start to first chart: bare {totals['bare']:.2f} s, ckptboard {totals['ckptboard']:.2f} s, "
          f"{totals['ckptboard'] / totals['bare']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
