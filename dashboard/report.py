"""The batch report: every view's figures for every run in one self-contained ``index.html`` (and PNGs via kaleido).

``index.html`` embeds Plotly's JavaScript once, in ``<head>``; each figure is a ``<div class="plotly-graph-div">``
drawn by an inline script, so the report works offline and loads nothing from the network. Tables are plain HTML.

What goes in, per run (sections in this order, after the global Overview and Health sections):

- Tensors: the last checkpoint's table, the ``TABLE_ROWS`` largest tensors by bytes when there are more.
- Scalars: ``REPORT_STATISTICS`` over step, one line per top-level module (the ``SCALAR_MODULES`` largest by
  parameter count; all parameters when the model has no top-level modules).
- Histograms: offset histograms and distributions of at most ``HISTOGRAM_TENSORS`` parameters: first those the
  health checks flag (non-finite, exploding norm), then the largest update ratio at the last step, then the
  largest parameters by element count that change during the run (then any, for a one-checkpoint run).
- BatchNorm: per-layer running mean and variance, the heatmap of the widest layer, ``num_batches_tracked``.
- Size: treemap of bytes by module and bytes by dtype of the last checkpoint (or the ``size_trees[run]`` given),
  the FLOP treemap when ``flop_reports[run]`` is given.
- Compare: first vs last checkpoint: added/removed/reshaped tensors and the largest relative changes.
- Spectral (when summarised with ``--spectral``): alpha (with WeightWatcher's published bands), stable rank and
  sigma_max over step for the ``SPECTRAL_LAYERS`` largest matrices.
- Gradients (when the checkpoints hold Adam or SGD-momentum state): gradient RMS and update/weight ratio per
  top-level module, the approximation stated on each figure.

``png`` writes each figure to ``png/NNN-<slug>.png`` with kaleido (Chromium found on PATH, or ``BROWSER_PATH``),
1000 px wide and as tall as the figure's layout;
tables are HTML only. When kaleido cannot render, the PNGs are left out and ``ReportResult.skipped`` says why.
"""

from __future__ import annotations

import base64
import functools
import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs

from ckptboard.core.atomic import atomic_write
from ckptboard.core.errors import CkptboardError, UsageError
from ckptboard.core.readings import APPROXIMATION
from ckptboard.core.health import bn_modules, compare_checkpoints, error_cards, health_table
from ckptboard.core.schema import StatsTables
from ckptboard.core.size import size_tree_from_frame
from ckptboard.dashboard.figures._common import tensor_label
from ckptboard.dashboard.figures.batchnorm import (
    batchnorm_heatmap,
    batchnorm_layers_figure,
    num_batches_tracked_figure,
)
from ckptboard.dashboard.figures.compare import compare_figure
from ckptboard.dashboard.figures.gradients import GRADIENT_METRICS, gradient_figure
from ckptboard.dashboard.figures.histograms import distribution_figure, histogram_figure
from ckptboard.dashboard.figures.overview import checkpoints_table, runs_overview_figure
from ckptboard.dashboard.figures.scalars import STATISTICS, scalar_figure
from ckptboard.dashboard.figures.size import dtype_bars, flops_treemap, size_treemap
from ckptboard.dashboard.figures.spectral import SPECTRAL_METRICS, spectral_figure, spectral_layers
from ckptboard.dashboard.figures.tensors import tensor_table
from ckptboard.dashboard.text import format_bytes

__all__ = [
    "REPORT_FORMATS", "REPORT_STATISTICS", "TABLE_ROWS", "SCALAR_MODULES", "HISTOGRAM_TENSORS", "SPECTRAL_LAYERS",
    "ReportResult", "write_report",
]

REPORT_FORMATS = ("html", "png")
REPORT_STATISTICS = ("norm", "std", "update_ratio", "rel_dist_from_first")
TABLE_ROWS = 100
SCALAR_MODULES = 10
HISTOGRAM_TENSORS = 4
# The report is read, not zoomed: fewer drawn points and single-precision numbers keep it small (Plotly's own
# JavaScript, embedded once, is most of the file; see ``_compact``).
HISTOGRAM_STEPS = 12  # ridges per offset histogram, first and last kept
HISTOGRAM_BINS = 40
SCALAR_POINTS = 200
SPECTRAL_LAYERS = 8
PNG_BATCH = 16  # figures per kaleido call: one browser start each, progress between calls
_CONFIG = {"displaylogo": False, "responsive": True}

Progress = Callable[[int, int, str], None]  # (done, total, title of what was just drawn)


@dataclass
class ReportResult:
    """What ``write_report`` wrote and what it had to leave out."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    n_figures: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per format/figure left out, with the reason


@dataclass
class _Item:
    """One entry of the report: a figure to build, or a ready table / note."""

    title: str
    build: Callable[[], go.Figure] | None = None
    table: pd.DataFrame | None = None
    note: str = ""


@dataclass
class _Section:
    anchor: str
    title: str
    items: list[_Item] = field(default_factory=list)


def write_report(
    tables: StatsTables,
    out_dir: str | Path,
    formats: Sequence[str] = ("html",),
    *,
    progress: Progress | None = None,
    size_trees: Mapping[str, Any] | None = None,
    flop_reports: Mapping[str, Any] | None = None,
) -> ReportResult:
    """Write the report in ``formats`` ("html", "png") under ``out_dir``; ``progress(done, total, title)`` after
    each figure is built (and after each PNG)."""
    wanted = [str(f).strip().lower() for f in formats]
    unknown = [f for f in wanted if f not in REPORT_FORMATS]
    if unknown or not wanted:
        raise UsageError(f"report format(s) {', '.join(unknown) or '(none)'} unknown; choose from html, png")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{out}: cannot create the report folder ({e.strerror or e})") from e
    result = ReportResult(out)
    sections = _plan(tables, size_trees or {}, flop_reports or {})
    planned = [item for s in sections for item in s.items if item.build is not None]
    total = len(planned) * len(wanted)
    figures: list[tuple[str, go.Figure]] = []
    for i, item in enumerate(planned, 1):
        try:
            fig = item.build()
        except (CkptboardError, ValueError) as e:  # bad data for one figure must not lose the others
            result.skipped.append(f"figure {item.title!r}: {type(e).__name__}: {e}")
            item.build, item.note = None, f"Not drawn: {e}"
        else:
            item.build = lambda fig=fig: fig
            figures.append((item.title, fig))
        if progress is not None:
            progress(i, total, item.title)
    result.n_figures = len(figures)
    if "html" in wanted:
        result.files.append(_write_html(sections, out / "index.html"))
    if "png" in wanted:
        done = len(planned) * (len(wanted) - 1)
        result.files += _write_pngs(figures, out / "png", result, progress, done, total)
    return result


# --- what goes in --------------------------------------------------------------------------------------------


def _plan(tables: StatsTables, size_trees: Mapping[str, Any], flop_reports: Mapping[str, Any]) -> list[_Section]:
    """Every section and item, figures not built yet (so that progress knows the total)."""
    health = health_table(tables)
    overview = _Section("overview", "Overview", [_Item("Runs", build=lambda: runs_overview_figure(tables))])
    cards = pd.DataFrame(error_cards(tables), columns=["run", "checkpoint", "error", "message"])
    overview.items.append(_Item("Files that could not be read", table=cards,
                                note="" if len(cards) else "Every checkpoint file was read."))
    overview.items.append(_Item("Checkpoints", table=_capped(checkpoints_table(tables))))
    sections = [overview, _Section("health", "Health", [_Item("Findings", table=_capped(health),
                                                              note="" if len(health) else "No findings.")])]
    runs = sorted(set(tables.checkpoints["run"].dropna().astype(str)))
    for n, run in enumerate(runs):
        sections += _run_sections(tables, run, f"run{n}", health, size_trees.get(run), flop_reports.get(run))
    return sections


def _run_sections(tables: StatsTables, run: str, anchor: str, health: pd.DataFrame, size_tree, flop_report):
    ck = tables.checkpoints[tables.checkpoints["run"] == run].sort_values(["step", "checkpoint"], kind="stable")
    first, last = str(ck["checkpoint"].iloc[0]), str(ck["checkpoint"].iloc[-1])
    t = tables.tensors[tables.tensors["run"] == run]
    where = f" ({run})"
    out = []

    # Largest first: the weights a reader came for, not the 8-byte num_batches_tracked counters.
    rows = tensor_table(tables, last).sort_values("nbytes", ascending=False, kind="stable")
    note = f"{last}: {len(rows)} tensors, largest first"
    if len(rows) > TABLE_ROWS:
        note += f", the {TABLE_ROWS} largest shown"
        rows = rows.head(TABLE_ROWS)
    out.append(_Section(f"{anchor}-tensors", f"Tensors{where}", [_Item(f"Tensors of {last}", table=rows, note=note)]))

    modules = _top_modules(t[t["checkpoint"] == last])
    scalars = [
        _Item(f"{STATISTICS[stat]}{where}", build=lambda stat=stat: scalar_figure(
            tables, stat, modules=modules, runs=[run], smoothing=0.6 if stat == "update_ratio" else 0.0,
            max_points=SCALAR_POINTS))
        for stat in REPORT_STATISTICS
    ]
    out.append(_Section(f"{anchor}-scalars", f"Scalars{where}", scalars))

    hist = []
    for group, name in _histogram_tensors(tables, run, last, health):
        hist.append(_Item(f"{tensor_label(group, name)} histograms{where}",
                          build=lambda g=group, n=name: histogram_figure(
                              tables, run, g, n, mode="offset", bins=HISTOGRAM_BINS, max_steps=HISTOGRAM_STEPS)))
        hist.append(_Item(f"{tensor_label(group, name)} distribution{where}",
                          build=lambda g=group, n=name: distribution_figure(tables, run, g, n)))
    out.append(_Section(f"{anchor}-histograms", f"Histograms{where}", hist))

    layers = bn_modules(tables, run)
    if len(layers):
        widest = tensor_label(layers["group"].iloc[0], layers["module"].iloc[0])
        out.append(_Section(f"{anchor}-batchnorm", f"BatchNorm{where}", [
            _Item(f"running_mean per layer{where}", build=lambda: batchnorm_layers_figure(tables, run, "running_mean")),
            _Item(f"running_var per layer{where}", build=lambda: batchnorm_layers_figure(tables, run, "running_var")),
            _Item(f"{widest} running_var heatmap{where}",
                  build=lambda: batchnorm_heatmap(tables, run, widest, "running_var")),
            _Item(f"num_batches_tracked{where}", build=lambda: num_batches_tracked_figure(tables, run)),
        ]))

    size = _size_items(t[t["checkpoint"] == last], size_tree, flop_report, where)
    if size:
        out.append(_Section(f"{anchor}-size", f"Size & FLOPs{where}", size))

    result = compare_checkpoints(tables, first, last)
    events = pd.DataFrame(
        [{"tensor": n, "change": "added", "detail": ""} for n in result.added]
        + [{"tensor": n, "change": "removed", "detail": ""} for n in result.removed]
        + [{"tensor": n, "change": "reshaped", "detail": f"{a} → {b}"} for n, a, b in result.reshaped],
        columns=["tensor", "change", "detail"],
    )
    out.append(_Section(f"{anchor}-compare", f"Compare first vs last{where}", [
        _Item(f"Largest relative changes {first} → {last}", build=lambda: compare_figure(result)),
        _Item("Tensors added, removed or reshaped", table=events,
              note="" if len(events) else "Same tensors with the same shapes."),
        _Item("Changes", table=_capped(result.changes, 20)),
    ]))
    out += _extras_sections(tables, run, anchor, where)
    return out


def _extras_sections(tables: StatsTables, run: str, anchor: str, where: str) -> list[_Section]:
    """Spectral health and gradients from optimizer state, when the cache holds them."""
    out = []
    spectral = tables.spectral[tables.spectral["run"] == run]
    if len(spectral):
        metrics = [m for m in SPECTRAL_METRICS if spectral[m].notna().any()]
        out.append(_Section(f"{anchor}-spectral", f"Spectral{where}", [
            _Item(f"{SPECTRAL_METRICS[m]}{where}", build=lambda m=m: spectral_figure(
                spectral, m, spectral_layers(spectral, m, SPECTRAL_LAYERS), [run]))
            for m in metrics
        ]))
    gradients = tables.gradients[tables.gradients["run"] == run]
    if len(gradients):
        largest = gradients.groupby("module")["numel"].sum().sort_values(ascending=False, kind="stable")
        labels = [m or "(root)" for m in largest.index[:SCALAR_MODULES]]
        stats = [m for m in ("grad_rms", "update_ratio", "m_norm") if gradients[m].notna().any()]
        out.append(_Section(f"{anchor}-gradients", f"Gradients from optimizer state{where}", [
            _Item(f"{GRADIENT_METRICS[m]}{where}", build=lambda m=m: gradient_figure(
                gradients, m, labels, [run], by_module=True), note=APPROXIMATION if i == 0 else "")
            for i, m in enumerate(stats)
        ]))
    return out


def _top_modules(rows: pd.DataFrame) -> list[str] | None:
    """The ``SCALAR_MODULES`` largest top-level modules by parameter elements; ``None`` (all parameters) if none."""
    params = rows[rows["kind"] == "parameter"]
    top = params["module"].fillna("").astype(str).str.split(".", n=1).str[0]
    sizes = params.groupby(top.to_numpy())["numel"].sum().drop("", errors="ignore")
    if sizes.empty:
        return None
    return sizes.sort_values(ascending=False, kind="stable").head(SCALAR_MODULES).index.tolist()


def _histogram_tensors(tables: StatsTables, run: str, last: str, health: pd.DataFrame) -> list[tuple[str, str]]:
    """At most HISTOGRAM_TENSORS parameters: flagged by health, then the largest last update ratio, then the
    largest that change, then the largest."""
    chosen: list[tuple[str, str]] = []

    def add(keys) -> None:
        for key in keys:
            if key not in chosen and len(chosen) < HISTOGRAM_TENSORS:
                chosen.append(key)

    t = tables.tensors
    params = t[(t["checkpoint"] == last) & (t["kind"] == "parameter")]
    known = set(zip(params["group"], params["name"]))
    flagged = health[(health["run"] == run) & health["check"].isin(["non-finite", "exploding-norm"])]
    add(k for k in zip(flagged["group"], flagged["name"]) if k in known)
    u = tables.updates[(tables.updates["checkpoint"] == last) & (tables.updates["kind"] == "parameter")]
    u = u[np.isfinite(u["update_ratio"].to_numpy(dtype=float))].sort_values("update_ratio", ascending=False)
    add(list(zip(u["group"], u["name"]))[:1])
    unchanged = health[(health["run"] == run) & (health["check"] == "unchanged-across-run")]
    frozen = set(zip(unchanged["group"], unchanged["name"]))
    biggest = params.sort_values("numel", ascending=False, kind="stable")
    biggest_keys = list(zip(biggest["group"], biggest["name"]))
    add(k for k in biggest_keys if k not in frozen)  # a parameter that never moves draws identical ridges
    add(biggest_keys)
    return chosen


def _size_items(rows: pd.DataFrame, tree, flop_report, where: str) -> list[_Item]:
    """Size treemap and dtype bars (and the FLOP treemap)."""
    if tree is None and len(rows):
        groups = rows["group"].fillna("").astype(str)
        main = "" if (groups == "").any() else groups.iloc[0]  # the model's own state_dict over EMA copies
        tree = size_tree_from_frame(rows[groups == main])
    items = []
    if tree is not None:
        items += [_Item(f"Bytes by module{where}", build=lambda: size_treemap(tree, "bytes")),
                  _Item(f"Bytes by dtype{where}", build=lambda: dtype_bars(tree))]
    if flop_report is not None:
        items.append(_Item(f"FLOPs by module{where}", build=lambda: flops_treemap(flop_report)))
    return items


def _capped(df: pd.DataFrame, rows: int = TABLE_ROWS * 5) -> pd.DataFrame:
    return df.head(rows)


# --- HTML ----------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 2rem 4rem; color: #222; }
nav { position: sticky; top: 0; background: #fff; padding: .5rem 0; border-bottom: 1px solid #ddd; z-index: 10; }
nav a { margin-right: 1rem; font-size: .9rem; }
h2 { margin-top: 2.5rem; border-bottom: 2px solid #f57c00; }
table.ckpt { border-collapse: collapse; font-size: .8rem; margin: .5rem 0 1.5rem; }
table.ckpt th, table.ckpt td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
table.ckpt th { background: #f5f5f5; }
.note { color: #666; font-size: .85rem; }
"""


def _write_html(sections: list[_Section], path: Path) -> Path:
    """Assemble ``index.html``: Plotly's JS once in the head, then each section's figures and tables."""
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections if s.items)
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ckptboard report</title>",
        f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        f"<script>const {_TEMPLATE_VAR} = {_default_template_json()};</script>",
        f"</head><body><h1>ckptboard report</h1><nav>{nav}</nav>",
    ]
    n = 0
    for section in sections:
        if not section.items:
            continue
        parts.append(f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>')
        for item in section.items:
            parts.append(f"<h3>{html.escape(item.title)}</h3>")
            if item.note:
                parts.append(f'<p class="note">{html.escape(item.note)}</p>')
            if item.build is not None:
                n += 1
                parts.append(_figure_html(item.build(), f"figure-{n}"))
            elif item.table is not None and len(item.table):
                parts.append(_table_html(item.table))
        parts.append("</section>")
    parts.append("</body></html>\n")
    atomic_write(path, lambda f: f.write("\n".join(parts).encode("utf-8")))  # a killed export leaves no half report
    return path


_NUMERIC_ARRAYS = ("x", "y", "z", "customdata", "base")
_TEMPLATE_VAR = "CKPTBOARD_TEMPLATE"
_DEFAULT_HEIGHT_PX = 450  # Plotly's own default


@functools.lru_cache(maxsize=1)
def _default_template_json() -> str:
    return to_json_plotly(go.Figure().to_plotly_json()["layout"].get("template", {}))


def _figure_html(fig: go.Figure, div_id: str) -> str:
    """One figure as a div and the script that draws it. Plotly's default template (6.5 kB of JSON) is written
    once in the head and referenced here, instead of repeated in every figure as ``fig.to_html`` does."""
    spec = fig.to_plotly_json()
    layout = dict(spec["layout"])
    template = layout.pop("template", None)
    layout_js = to_json_plotly(layout)
    if template is not None:
        own = to_json_plotly(template)
        layout_js = (f"Object.assign({layout_js}, {{template: {_TEMPLATE_VAR}}})"
                     if own == _default_template_json() else f"Object.assign({layout_js}, {{template: {own}}})")
    height = f"{int(layout['height'])}px" if layout.get("height") else f"{_DEFAULT_HEIGHT_PX}px"
    return (f'<div id="{div_id}" class="plotly-graph-div" style="height:{height}; width:100%;"></div>\n'
            f'<script>Plotly.newPlot("{div_id}", {to_json_plotly(_compact(spec["data"]))}, {layout_js}, '
            f"{to_json_plotly(_CONFIG)});</script>")


def _compact(traces: list[dict]) -> list[dict]:
    """The traces' float64 arrays (Plotly's base64 typed-array specs) in single precision: 7 significant digits,
    half the bytes, plenty for reading a chart whose hover shows 4. (On the JSON dicts: a figure's own
    validators turn float32 back into float64.)"""
    for trace in traces:
        for attr in _NUMERIC_ARRAYS:
            spec = trace.get(attr)
            if isinstance(spec, dict) and spec.get("dtype") == "f8" and "bdata" in spec:
                values = np.frombuffer(base64.b64decode(spec["bdata"]), dtype="<f8").astype("<f4")
                trace[attr] = {**spec, "dtype": "f4", "bdata": base64.b64encode(values.tobytes()).decode("ascii")}
    return traces


def _table_html(df: pd.DataFrame) -> str:
    df = df.copy()
    for col in ("nbytes", "size_bytes", "parameter_bytes", "buffer_bytes"):
        if col in df.columns and "size" not in df.columns:
            df[col] = df[col].map(format_bytes)
    return df.to_html(index=False, na_rep="", border=0, classes="ckpt", escape=True,
                      float_format=lambda x: f"{x:.4g}")


# --- PNG -----------------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "figure"


def _write_pngs(figures, folder: Path, result: ReportResult, progress: Progress | None, done: int, total: int):
    """The figures as PNGs, ``PNG_BATCH`` per kaleido browser session; on a rendering failure, note it and stop."""
    try:
        import plotly.io as pio
        import kaleido  # noqa: F401 - plotly needs it for write_images
    except ImportError as e:
        result.skipped.append(f"png: kaleido is not installed ({e}); pip install kaleido, or use html")
        return []
    folder.mkdir(exist_ok=True)
    paths = [folder / f"{i:03d}-{_slug(title)}.png" for i, (title, _) in enumerate(figures, 1)]
    written: list[Path] = []
    for start in range(0, len(figures), PNG_BATCH):
        chunk = figures[start : start + PNG_BATCH]
        # Kaleido's failures (no Chrome, a browser that dies, a timeout) come as many types; each means "no PNGs
        # here", which the report says instead of losing the HTML already written. (Its background server is
        # not used: a browser failing there leaves the next call waiting forever.)
        try:
            pio.write_images([fig for _, fig in chunk], paths[start : start + len(chunk)], width=1000,
                             height=[fig.layout.height or 500 for _, fig in chunk])
        except Exception as e:  # noqa: BLE001 - see above
            result.skipped.append(
                f"png: kaleido could not render ({type(e).__name__}: {str(e)[:300]}); install Chromium or set "
                f"BROWSER_PATH to a Chrome/Chromium binary, or use html ({len(written)} of {len(figures)} written)"
            )
            break
        written += paths[start : start + len(chunk)]
        if progress is not None:
            for i, (title, _) in enumerate(chunk, start + 1):
                progress(done + i, total, f"png: {title}")
    return written
