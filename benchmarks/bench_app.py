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
memory, no browser) and, with ``--browser``, the Streamlit server's ``VmHWM`` after the round. That process starts
as ``ckptboard serve``'s does (``dashboard/launch.py``: the page's libraries imported and Arrow's memory pool chosen
before the first page), so that its first render is the server's. In Chromium it also reports the time to the
first content of a page (the Overview's run picker, before its chart: Plotly's JavaScript alone takes seconds in a
new tab) and the kilobytes the websocket brought per view.

``--baseline DIR`` (e.g. ``git archive main`` unpacked) measures that checkout too, round by round alternating with
this tree (each chosen by a ``ckptboard`` link first on ``PYTHONPATH``, as ``bench_scale.py`` does).

Usage: ``python benchmarks/bench_app.py [--work DIR] [--checkpoints 200] [--root ROOT] [--repeats 5] [--browser]
[--baseline DIR]``
"""

from __future__ import annotations

import argparse
import importlib
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

# Only the standard library here: a probe process picks Arrow's memory pool before anything imports pyarrow.

HERE = Path(__file__).resolve().parent.parent
BLOCKS = 71  # 71 blocks × 7 tensors + head weight/bias + input_mean = 500 tensors


def _app() -> Path:
    """The app of the ckptboard this process imports (this tree, or ``--baseline``'s)."""
    from ckptboard.dashboard.config import APP_PATH

    return APP_PATH


def _start_like_serve() -> None:
    """What ``ckptboard serve``'s process does before its server answers: choose Arrow's pool, import the page's
    libraries (``launch.main``; a checkout without these steps skips them)."""
    from ckptboard.dashboard import launch

    pool = getattr(launch, "ARROW_POOL", None)
    if pool:
        os.environ.setdefault(*pool)
    for name in getattr(launch, "WARM_IMPORTS", ()):
        importlib.import_module(name)


def _env(impl: Path | None) -> dict[str, str]:
    """The environment that makes a child process import ``impl`` (a checkout) as ``ckptboard``, as
    ``bench_scale.py`` does; this tree's editable install when None."""
    from bench_scale import _env as checkout_env  # imports torch: in the parent only, never in a probe

    return checkout_env(impl)


def _net():
    """A model of :data:`BLOCKS` blocks (Linear + BatchNorm1d), a head and an input-mean buffer: 500 tensors."""
    import torch
    from torch import nn

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

    return _Net()


def write_series(run_dir: Path, n_checkpoints: int, seed: int = 0) -> None:
    """``n_checkpoints`` state_dicts of :func:`_net`, each a small seeded step from the previous one."""
    import torch

    torch.manual_seed(seed)
    net = _net()
    run_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_checkpoints):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
            for block in net.blocks:
                block.bn.running_mean.add_(0.01 * torch.randn_like(block.bn.running_mean))
                block.bn.num_batches_tracked.add_(100)
        torch.save(net.state_dict(), run_dir / f"step_{(i + 1) * 100:06d}.pt")


def _timed_run(at) -> float:
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"the app raised: {at.exception[0].value}")
    return elapsed


def _new_session(root: Path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(_app()), default_timeout=120)
    at.session_state["app_argv"] = [str(root)]
    return at


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_round(root: Path, baselines: bool = True) -> dict[str, float]:
    """Seconds for: the cache's own reads (side by side, with ``baselines``), a cold first render, each view twice
    (first visit, memoised), and the first render of a second session while the server is warm."""
    import streamlit as st

    from ckptboard.core.load import load_stats
    from ckptboard.core.summarize import plan
    from ckptboard.dashboard.views import View

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


def probe_round(root: Path, impl: Path | None = None) -> dict[str, float]:
    """:func:`one_round` (the app only) in a fresh process started as ``serve``'s is, with its peak RSS in MB."""
    import json

    done = subprocess.run([sys.executable, __file__, "--probe", str(root)], check=True, capture_output=True,
                          text=True, env=_env(impl))
    return json.loads(done.stdout.strip().splitlines()[-1])


def _probe(root: Path) -> int:
    import json
    import resource

    _start_like_serve()
    import streamlit.logger

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


def _serve(root: Path, impl: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    return start_server([sys.executable, "-m", "ckptboard.dashboard.cli", "serve", str(root), "--port", str(port)],
                        port, env=_env(impl))  # fmt: skip


def start_server(command: list[str], port: int, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start a Streamlit server (``command``, listening on ``port``) and wait until it answers its health check."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
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


def browser_round(root: Path, impl: Path | None = None) -> dict[str, float]:
    """Open, reopen and switch views in Chromium against a fresh ``ckptboard serve``; seconds to content shown (to
    the Overview's first content and to its chart on opening) and kilobytes the websocket brought per view."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(HERE / "tests"))
    from test_serve_e2e import CHART_VIEWS, CHROMIUM, CHROMIUM_ARGS, MARKER, _wait_drawn

    from ckptboard.dashboard.views import View

    def shown(page, view: View) -> None:
        _wait_drawn(page, view)
        if view in CHART_VIEWS and page.locator(".stPlotlyChart").count():  # a synthetic series may draw none
            page.wait_for_selector(".js-plotly-plot .main-svg")

    received: list[int] = []

    def listen(page) -> None:
        page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: received.append(len(payload))))

    times = {}
    proc, url = _serve(root, impl)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for label in ("open, fresh server", "open, new tab (server warm)"):
                page = browser.new_page(viewport={"width": 1440, "height": 1100})
                page.set_default_timeout(120_000)
                listen(page)
                start = time.perf_counter()
                page.goto(url)
                page.locator(f".st-key-{MARKER[View.OVERVIEW]}").first.wait_for()
                times[f"{label}: content"] = time.perf_counter() - start
                page.wait_for_selector(".js-plotly-plot .main-svg")
                times[f"{label}: chart"] = time.perf_counter() - start
                shown(page, View.OVERVIEW)  # let the new-checkpoint look finish before the next step
            for visit in ("first visit", "memoised"):
                for view in [*View][1:] + [View.OVERVIEW]:
                    time.sleep(0.3)  # the previous page's last frames
                    received.clear()
                    start = time.perf_counter()
                    page.locator(".st-key-view button", has_text=str(view)).first.click()
                    page.locator(".st-key-view button[aria-checked=true]", has_text=str(view)).wait_for()
                    shown(page, view)
                    times[f"{view} ({visit})"] = time.perf_counter() - start
                    if visit == "first visit":
                        times[f"{view}, sent (kB)"] = sum(received) / 1e3
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
        if "(MB)" not in name and "(kB)" not in name:
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
    parser.add_argument("--baseline", type=Path, help="another checkout of ckptboard, measured alternately")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # one AppTest round in this process
    args = parser.parse_args(argv)
    if args.probe:
        return _probe(args.probe)
    import streamlit.logger

    streamlit.logger.set_log_level("error")  # AppTest's "no runtime" chatter
    if args.root:
        root = args.root
        impls = {"this tree": None} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
        print(f"series {root}; load average {os.getloadavg()[0]:.2f}", flush=True)
        rounds: dict[str, list] = {name: [] for name in impls}
        for _ in range(args.repeats):  # alternating, so that both see the same load
            for name, impl in impls.items():
                rounds[name].append(probe_round(root, impl))
        for name in impls:
            _print(f"AppTest, {name} (whole script run, a fresh process per round)", rounds[name])
        if args.browser:
            rounds = {name: [] for name in impls}
            for _ in range(args.repeats):
                for name, impl in impls.items():
                    rounds[name].append(browser_round(root, impl))
            for name in impls:
                _print(f"ckptboard serve + Chromium, {name} (content on screen)", rounds[name])
        print(f"load average {os.getloadavg()[0]:.2f}")
        return 0
    import torch

    from ckptboard.core.summarize import summarize

    torch.set_num_threads(1)
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
