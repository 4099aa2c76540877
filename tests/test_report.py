"""The HTML report (self-contained, Plotly JS once, every figure) and the PNG export (skipped when it cannot run)."""

import re
import shutil

import pytest
from plotly.offline import get_plotlyjs

from ckptboard.core.errors import UsageError
from ckptboard.dashboard.report import HISTOGRAM_TENSORS, REPORT_STATISTICS, write_report
from _fixtures_tables import synthetic_tables


@pytest.fixture(scope="module")
def tables():
    # run0 (NaN tail, dead channel, error row), run1 (added tensor), single (one checkpoint); 2 conv/BN blocks
    return synthetic_tables(n_checkpoints=4, n_tensors=16, runs=2)


@pytest.fixture(scope="module")
def written(tables, tmp_path_factory):
    """One HTML report of ``tables`` shared by the HTML tests: (out dir, result, progress calls)."""
    out, calls = tmp_path_factory.mktemp("report"), []
    result = write_report(tables, out, progress=lambda done, total, title: calls.append((done, total)))
    return out, result, calls


def test_html_self_contained_plotly_once(written):
    out, result, calls = written
    index = out / "index.html"
    assert result.files == [index] and result.skipped == []
    text = index.read_text(encoding="utf-8")
    assert text.count(get_plotlyjs()[:200]) == 1  # the library's own first 200 characters, embedded once
    assert text.count('class="plotly-graph-div"') == result.n_figures
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing loaded from anywhere
    assert "http://" not in re.sub(r"<script.*?</script>", "", text, flags=re.S).replace("http://www.w3.org", "")
    # progress once per figure, in order, with the total known up front
    assert calls == [(i, result.n_figures) for i in range(1, result.n_figures + 1)]
    assert [p.name for p in out.iterdir()] == ["index.html"]  # no temporary file left


def test_html_holds_every_view_per_run(written):
    out, result, _ = written
    text = (out / "index.html").read_text(encoding="utf-8")
    for run in ("run0", "run1", "single"):
        for view in ("Tensors", "Scalars", "Histograms", "BatchNorm", "Compare first vs last"):
            assert f"{view} ({run})" in text
    assert "run0/ckpt_broken.pt" in text and "CorruptCheckpointError" in text  # the error card
    assert "non-finite" in text and "dead-bn-channel" in text  # health table
    assert "head.extra.weight" in text  # added in run1, listed by compare
    # per run: overview 1 + scalars + 2 per histogram tensor + BN 4 + compare 1 (+ size 2 when present)
    per_run = len(REPORT_STATISTICS) + 2 * HISTOGRAM_TENSORS + 4 + 1
    assert result.n_figures in (1 + 3 * per_run, 1 + 3 * (per_run + 2))


def test_figures_carry_little_data(written):
    # Plotly's template is written once and referenced by every figure; numbers are single precision.
    out, result, _ = written
    text = (out / "index.html").read_text(encoding="utf-8")
    assert text.count("const CKPTBOARD_TEMPLATE = ") == 1
    assert text.count("{template: CKPTBOARD_TEMPLATE}") == result.n_figures
    assert '"y":{"dtype":"f8"' not in text and '"y":{"dtype":"f4"' in text  # (layout tick values stay f8)


def test_report_histograms_are_decimated(tables):
    from ckptboard.dashboard.figures.histograms import histogram_figure
    from ckptboard.dashboard.report import HISTOGRAM_BINS, HISTOGRAM_STEPS

    many = synthetic_tables(n_checkpoints=50, n_tensors=16, runs=1)
    fig = histogram_figure(many, "run0", "", "fc.weight", bins=HISTOGRAM_BINS, max_steps=HISTOGRAM_STEPS)
    steps = [t.meta["step"] for t in fig.data]
    assert len(steps) == HISTOGRAM_STEPS and steps[0] == 0 and steps[-1] == 49 * 100  # first and last kept


def test_tensor_table_starts_with_the_largest(written):
    out, _, _ = written
    text = (out / "index.html").read_text(encoding="utf-8")
    tensors = text[text.index("<h3>Tensors of run1/"):]
    first_row = tensors[tensors.index("<tbody>"):tensors.index("</tr>", tensors.index("<tbody>"))]
    assert "num_batches_tracked" not in first_row and "largest first" in tensors[:300]


def test_unknown_format_is_refused(tables, tmp_path):
    with pytest.raises(UsageError, match="report format.*svg.*unknown; choose from html, png"):
        write_report(tables, tmp_path, ["html", "svg"])
    assert list(tmp_path.iterdir()) == []


def test_png_renders_or_skips_cleanly(tmp_path):
    pytest.importorskip("kaleido", reason="kaleido is not installed: PNG export is optional")
    if not (shutil.which("chromium") or shutil.which("google-chrome") or shutil.which("chromium-browser")):
        pytest.skip("no Chrome/Chromium on PATH: kaleido cannot render PNGs here")
    tiny = synthetic_tables(n_checkpoints=1, n_tensors=1, runs=0)  # one run, one checkpoint, one tensor
    result = write_report(tiny, tmp_path, ["png"])
    if result.skipped:
        pytest.skip(f"kaleido could not render here: {result.skipped[0]}")
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == result.n_figures and pngs[0].name == "001-Runs.png"
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "index.html").exists()


def test_png_failure_is_reported_not_raised(tmp_path, monkeypatch):
    pytest.importorskip("kaleido", reason="kaleido is not installed: PNG export is optional")
    monkeypatch.setenv("BROWSER_PATH", shutil.which("false") or "/bin/false")  # a "browser" that exits at once
    tiny = synthetic_tables(n_checkpoints=1, n_tensors=1, runs=0)
    result = write_report(tiny, tmp_path, ["html", "png"])
    assert (tmp_path / "index.html").exists()
    assert len(result.skipped) == 1 and result.skipped[0].startswith("png: kaleido could not render")
    assert "(0 of" in result.skipped[0]
