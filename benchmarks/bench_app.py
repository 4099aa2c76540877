"""Speed of the dashboard on a series of 200 checkpoints × 500 tensors already in the stats cache.

Measured with Streamlit's AppTest (the whole script run, in this process, no browser): the first render of a
session with cold Streamlit caches (reads the cache, draws Overview, then looks for new checkpoints), a switch to
every view (first visit: figures computed) and a second round of switches (figures memoised), and the first render
of another session while the server is warm; beside them, ``load_stats`` and ``plan`` alone. Medians of
``--repeats`` rounds. The series is written once into ``--work`` (real ``torch.save`` files of a real
``nn.Module``) and summarised there; later runs reuse it.

With ``--browser`` it also measures what a user sees: ``ckptboard serve`` on the series and headless Chromium
(``/usr/bin/chromium``): the time from opening the URL to the Overview's chart on screen, in a fresh server (cold:
the cache is read) and in a new tab of a running server, and from a click on a view to its content on screen.

With ``--root ROOT`` it measures an existing summarised series instead (e.g. one written by ``bench_scale.py``),
each AppTest round in a fresh process, and reports peak memory: the AppTest process's ``ru_maxrss`` (the app's own
memory, no browser) and, with ``--browser``, the Streamlit server's ``VmHWM`` after the round.

Usage: ``python benchmarks/bench_app.py [--work DIR] [--checkpoints 200] [--root ROOT] [--repeats 5] [--browser]``
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import streamlit as st
import streamlit.logger
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from ckptboard.core.summarize import plan, summarize
from ckptboard.core.load import load_stats
from ckptboard.dashboard.views import View

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
BLOCKS = 71  # 71 blocks × 7 tensors + head weight/bias + input_mean = 500 tensors


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.bn = nn.BatchNorm1d(width)


class _Net(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.blocks = nn.Sequential(*(_Block(width) for _ in range(BLOCKS)))
        self.head = nn.Linear(width, 4)
        self.register_buffer("input_mean", torch.zeros(width))


def write_series(run_dir: Path, n_checkpoints: int, seed: int = 0) -> None:
    """``n_checkpoints`` state_dicts of :class:`_Net`, each a small seeded step from the previous one."""
    torch.manual_seed(seed)
    net = _Net()
    run_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_checkpoints):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
            for block in net.blocks:
                block.bn.running_mean.add_(0.01 * torch.randn_like(block.bn.running_mean))
                block.bn.num_batches_tracked.add_(100)
        torch.save(net.state_dict(), run_dir / f"step_{(i + 1) * 100:06d}.pt")


def _timed_run(at: AppTest) -> float:
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"the app raised: {at.exception[0].value}")
    return elapsed


def _new_session(root: Path) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["app_argv"] = [str(root)]
    return at


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_round(root: Path, baselines: bool = True) -> dict[str, float]:
    """Seconds for: the cache's own reads (side by side, with ``baselines``), a cold first render, each view twice
    (first visit, memoised), and the first render of a second session while the server is warm."""
    times = {
        "load_stats alone": _timed(lambda: load_stats(root)),
        "plan alone (look for new files)": _timed(lambda: plan(root)),
    } if baselines else {}
    st.cache_resource.clear()
    st.cache_data.clear()
    at = _new_session(root)
    times["first render (cold server)"] = _timed_run(at)
    for visit in ("first visit", "memoised"):
        for view in View:
            at.session_state["view"] = view
            times[f"{view} ({visit})"] = _timed_run(at)
    times["first render (new session, warm)"] = _timed_run(_new_session(root))
    return times


def probe_round(root: Path) -> dict[str, float]:
    """:func:`one_round` (the app only) in a fresh process, with that process's peak RSS in MB."""
    import json

    done = subprocess.run([sys.executable, __file__, "--probe", str(root)], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _probe(root: Path) -> int:
    import json
    import resource

    streamlit.logger.set_log_level("error")
    times = one_round(root, baselines=False)
    times["peak RSS, AppTest process (MB)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(times))
    return 0


def _server_hwm_mb(proc: subprocess.Popen) -> float:
    """The largest peak RSS (VmHWM) of ``proc`` and its children: the Streamlit server that ``serve`` started."""
    import psutil

    peak = 0.0
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(root: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    return start_server([sys.executable, "-m", "ckptboard.dashboard.cli", "serve", str(root), "--port", str(port)],
                        port)  # fmt: skip


def start_server(command: list[str], port: int) -> tuple[subprocess.Popen, str]:
    """Start a Streamlit server (``command``, listening on ``port``) and wait until it answers its health check."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit(f"{' '.join(command[:5])} did not come up within 90 s")


def browser_round(root: Path) -> dict[str, float]:
    """Open, reopen and switch views in Chromium against a fresh ``ckptboard serve``; seconds to content shown."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_serve_e2e import CHART_VIEWS, CHROMIUM, CHROMIUM_ARGS, MARKER, _wait_drawn

    def shown(page, view: View) -> None:
        _wait_drawn(page, view)
        if view in CHART_VIEWS and page.locator(".stPlotlyChart").count():  # a synthetic series may draw none
            page.wait_for_selector(".js-plotly-plot .main-svg")

    times = {}
    proc, url = _serve(root)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for label in ("open, fresh server (cold)", "open, new tab (server warm)"):
                page = browser.new_page(viewport={"width": 1440, "height": 1100})
                page.set_default_timeout(120_000)
                start = time.perf_counter()
                page.goto(url)
                page.locator(f".st-key-{MARKER[View.OVERVIEW]}").first.wait_for()
                page.wait_for_selector(".js-plotly-plot .main-svg")
                times[label] = time.perf_counter() - start
                shown(page, View.OVERVIEW)  # let the new-checkpoint look finish before the next step
            for visit in ("first visit", "memoised"):
                for view in [*View][1:] + [View.OVERVIEW]:
                    start = time.perf_counter()
                    page.locator(".st-key-view button", has_text=str(view)).first.click()
                    page.locator(".st-key-view button[aria-checked=true]", has_text=str(view)).wait_for()
                    shown(page, view)
                    times[f"{view} ({visit})"] = time.perf_counter() - start
            browser.close()
        times["peak RSS, server (MB)"] = _server_hwm_mb(proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    return times


def _print(title: str, rounds: list[dict[str, float]]) -> float:
    print(f"\n{title}, median of {len(rounds)} rounds (min–max), seconds:")
    worst = 0.0
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        median = statistics.median(values)
        if "(MB)" not in name:
            worst = max(worst, median)
        print(f"  {name:<34} {median:8.3f}  ({min(values):.3f}–{max(values):.3f})")
    print(f"slowest median: {worst:.3f} s")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ckptboard-bench-app")
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time the real server in headless Chromium")
    parser.add_argument("--root", type=Path, help="an existing summarised series (its cache in ROOT) to measure")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # one AppTest round in this process
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    streamlit.logger.set_log_level("error")  # AppTest's "no runtime" chatter
    if args.probe:
        return _probe(args.probe)
    if args.root:
        root = args.root
        print(f"series {root}; load average {os.getloadavg()[0]:.2f}", flush=True)
        rounds = [probe_round(root) for _ in range(args.repeats)]
        _print("AppTest (whole script run, a fresh process per round)", rounds)
        if args.browser:
            _print("ckptboard serve + Chromium (content on screen)", [browser_round(root) for _ in range(args.repeats)])
        print(f"load average {os.getloadavg()[0]:.2f}")
        return 0
    root = args.work / f"series_{args.checkpoints}"
    if not root.exists():
        start = time.perf_counter()
        write_series(root / "run", args.checkpoints)
        print(f"wrote {args.checkpoints} checkpoints in {time.perf_counter() - start:.1f} s", flush=True)
    report = summarize(root)
    print(f"cache: {report.line()}", flush=True)
    _print("AppTest (whole script run)", [one_round(root) for _ in range(args.repeats)])
    if args.browser:
        _print("ckptboard serve + Chromium (content on screen)", [browser_round(root) for _ in range(args.repeats)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
