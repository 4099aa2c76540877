"""End to end in a real browser: ``ckptboard serve`` on a copy of sample_ckpts, and on a series of real layouts
(Hugging Face ``save_pretrained`` folders with long module names, three runs with equal values, a run without
steps, the samples);
every view opened in headless Chromium, Plotly charts rendered, no Streamlit exception on the page, every run in
the legends, no overlapping subplot titles; screenshots kept in ``tmp_path`` (their folder is printed)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from _fixtures_app import summarized_samples, write_hf_resnet_run, write_tiny_run
from ckptboard.dashboard.views import View

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
SERVER_START_S = 90
VIEW_RENDER_MS = 60_000
# Every view but Health draws Plotly charts on sample_ckpts (Health shows a table of findings).
# A widget key each view shows once it has drawn (Streamlit tags its container with ``st-key-<key>``).
MARKER = {View.OVERVIEW: "overview_run", View.TENSORS: "tensors_checkpoint", View.SCALARS: "scalars_stat",
          View.HISTOGRAMS: "hist_run", View.BATCHNORM: "bn_run", View.SIZE_FLOPS: "size_checkpoint",
          View.COMPARE: "compare_mode", View.HEALTH: "health_dead_var", View.SPECTRAL: "spectral_view",
          View.GRADIENTS: "grad_view"}  # fmt: skip
CHART_VIEWS = {View.OVERVIEW, View.TENSORS, View.SCALARS, View.HISTOGRAMS, View.BATCHNORM, View.SIZE_FLOPS,
               View.COMPARE}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ckptboard serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"ckptboard serve not healthy after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _need_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install chromium (apt-get install chromium) to run the browser test")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is missing: pip install playwright")


@contextlib.contextmanager
def _serving(root: Path, tmp_path: Path):
    """``ckptboard serve ROOT`` on a free port; yields its URL and always stops it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ckptboard.dashboard.cli", "serve", str(root), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture
def server(tmp_path, tmp_path_factory):
    """``ckptboard serve`` on a summarized copy of sample_ckpts; yields its URL and always stops it."""
    _need_browser()
    # Summarized beforehand: the first-open summarizing path is covered by the AppTest tests.
    root = summarized_samples(tmp_path_factory, tmp_path / "samples")
    with _serving(root, tmp_path) as url:
        yield url


EQUAL_RUNS = ("equal/a", "equal/b", "equal/c")
STEPLESS_RUN = "stepless"
HF_RUN = "checkpoints/resnet-tiny-finetune-lr3e-4"  # a long run name: its sidebar chip must not be cut


@pytest.fixture
def layouts_server(tmp_path, tmp_path_factory):
    """``ckptboard serve`` on the samples plus a save_pretrained series with long names and three equal runs."""
    _need_browser()
    from ckptboard.core.summarize import summarize

    root = summarized_samples(tmp_path_factory, tmp_path / "root")
    write_hf_resnet_run(root / HF_RUN, [10, 20, 30])
    for run in EQUAL_RUNS:  # the same seed: three runs whose every value is equal
        write_tiny_run(root / run, [0, 1, 2, 3], seed=0)
    # A run without steps: names with no number, state_dicts with no metadata (drawn by position).
    for path, name in zip(write_tiny_run(root / STEPLESS_RUN, [1, 2, 3], seed=1), ("init", "best", "final")):
        path.rename(path.with_name(f"{name}.pt"))
    summarize(root)
    with _serving(root, tmp_path) as url:
        yield url, sorted(["adamw_lr1e-2", "adamw_lr1e-3", "sgd_safetensors", HF_RUN, STEPLESS_RUN, *EQUAL_RUNS])


def _wait_drawn(page, view: View) -> None:
    """Until ``view``'s marker widget is shown, the script has finished and no element is left stale."""
    page.locator(f".st-key-{MARKER[view]}").first.wait_for(timeout=VIEW_RENDER_MS)
    page.wait_for_function(
        """() => document.querySelector('[data-testid="stApp"][data-test-script-state="notRunning"]') !== null
                 && document.querySelector('[data-stale="true"]') === null""",
        timeout=VIEW_RENDER_MS,
    )


def _open(browser, url: str):
    """A new tab on ``url``, once its Overview is drawn."""
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    page.set_default_timeout(VIEW_RENDER_MS)
    page.goto(url)
    _wait_drawn(page, View.OVERVIEW)
    return page


def _visit(page, view: View, shots: Path) -> None:
    """Click ``view``'s button in the switcher, as a user does; wait until it is drawn, keep a screenshot, and
    fail on a Streamlit exception."""
    page.locator(".st-key-view button", has_text=str(view)).first.click()
    page.locator(".st-key-view button[aria-checked=true]", has_text=str(view)).wait_for()
    _wait_drawn(page, view)
    if view in CHART_VIEWS:
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=VIEW_RENDER_MS)
    page.screenshot(path=str(shots / f"{view.name.lower()}.png"), full_page=True)
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{view}: {exceptions.first.inner_text()}"


def test_every_view_renders_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = _open(browser, server)
            for view in View:
                _visit(page, view, tmp_path)
                if view in CHART_VIEWS:
                    assert page.locator(".js-plotly-plot").count() >= 1, view
            # A view opened from the URL directly, as a shared link does.
            page.goto(f"{server}/?view={quote(str(View.SCALARS))}")
            _wait_drawn(page, View.SCALARS)
            page.wait_for_selector(".js-plotly-plot .main-svg")
            assert page.locator('[data-testid="stException"]').count() == 0
        finally:
            browser.close()
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(shots) == len(View), shots


def _legend_texts(page, chart_key: str) -> list[str]:
    return page.locator(f".st-key-{chart_key} .legendtext").evaluate_all("els => els.map(e => e.textContent)")


def _overlapping_titles(page, chart_key: str) -> list[tuple[str, str]]:
    """Pairs of subplot titles (Plotly annotations) of one chart whose boxes intersect."""
    boxes = page.evaluate(
        """(key) => [...document.querySelectorAll(`.st-key-${key} .infolayer g.annotation`)].map(a => {
               const r = a.getBoundingClientRect();
               return [a.textContent, r.left, r.top, r.right, r.bottom];
           })""",
        chart_key,
    )
    return [
        (a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
        if min(a[3], b[3]) - max(a[1], b[1]) > 0.5 and min(a[4], b[4]) - max(a[2], b[2]) > 0.5
    ]


def _pick(page, key: str, text: str, chart_key: str) -> None:
    """Choose ``text`` in the selectbox ``key``, as a user does, and wait until the chart ``chart_key``'s title
    names it (the rerun has drawn it)."""
    page.locator(f".st-key-{key}").get_by_role("combobox").first.click()
    page.get_by_role("option").filter(has_text=text).first.click()
    page.wait_for_function(
        "([chart, text]) => [...document.querySelectorAll(`.st-key-${chart} .gtitle`)]"
        ".some(t => t.textContent.includes(text))",
        arg=[chart_key, text],
    )


def test_real_layouts_in_chromium(layouts_server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, runs = layouts_server
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = _open(browser, url)
            for view in View:
                _visit(page, view, shots)
                if view == View.OVERVIEW:
                    assert set(runs) <= set(_legend_texts(page, "overview_runs_chart")), view
                    chips = page.locator(".st-key-sidebar_runs [data-tag] > span[title]")
                    assert chips.count() == len(runs)
                    cut = chips.evaluate_all("els => els.filter(e => e.scrollWidth > e.clientWidth + 1)"
                                             ".map(e => e.textContent)")
                    assert cut == [], f"run chips cut in the sidebar: {cut}"
                    grid = page.locator('[data-testid="stDataFrame"] .dvn-scroller')  # the checkpoints table
                    grid.first.wait_for()
                    widths = grid.evaluate_all("els => els.map(e => [e.scrollWidth, e.clientWidth])")
                    assert widths and all(full <= shown + 1 for full, shown in widths), f"table scrolls: {widths}"
                if view == View.SCALARS:  # each run draws a line by default, and has its legend entry
                    assert set(runs) <= set(_legend_texts(page, "scalars_chart")), view
                if view == View.BATCHNORM:
                    # Hugging Face's 10 norm layers with 50-character paths: small multiples, titles apart
                    _pick(page, "bn_run", HF_RUN, "bn_layers_chart")
                    _wait_drawn(page, view)
                    page.wait_for_selector(".st-key-bn_layers_chart .infolayer g.annotation")
                    titles = page.locator(".st-key-bn_layers_chart .infolayer g.annotation").count()
                    assert titles == 10
                    assert _overlapping_titles(page, "bn_layers_chart") == []
                    page.screenshot(path=str(shots / "batchnorm_hf.png"), full_page=True)
                    assert page.locator('[data-testid="stException"]').count() == 0
                if view == View.SIZE_FLOPS:
                    # The HF run's config.json gives the FLOP breakdown (its model built on meta) with no model SPEC.
                    page.locator(".st-key-size_checkpoint").get_by_role("combobox").first.click()
                    page.keyboard.type("resnet-tiny")  # the list is long and drawn lazily: search it as a user does
                    page.get_by_role("option").filter(has_text="resnet-tiny").last.click()
                    page.get_by_text("ResNetForImageClassification built from").wait_for(timeout=VIEW_RENDER_MS)
                    _wait_drawn(page, view)
                    page.screenshot(path=str(shots / "flops_hf.png"), full_page=True)
                    assert page.locator('[data-testid="stException"]').count() == 0
                if view == View.HISTOGRAMS:
                    _pick(page, "hist_run", HF_RUN, "hist_chart")
                    _wait_drawn(page, view)
                    page.screenshot(path=str(shots / "histograms_hf.png"), full_page=True)
                    assert page.locator('[data-testid="stException"]').count() == 0
        finally:
            browser.close()
    assert len(list(shots.glob("*.png"))) == len(View) + 3
