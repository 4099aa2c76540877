"""Scalars view: a statistic over steps for chosen tensors or modules, runs overlaid, TensorBoard's smoothing.

A module's value aggregates its parameters in each group (state_dict) separately (buffers are left out: a BatchNorm's ``num_batches_tracked`` would
swamp every norm): norms and distances as the root of the summed squares (the exact norm of the concatenated
parameters), ratios as that norm over the same aggregate of the denominators, means weighted by element count,
``std`` pooled (exact for population std), counts summed, extremes as extremes. ``cosine`` is an element-weighted
mean of the tensors' cosines, an approximation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ckptboard.core.errors import UsageError
from ckptboard.core.schema import PERCENTILE_COLUMNS, UPDATE_COLUMNS, StatsTables
from ckptboard.dashboard.figures._common import (
    decimate_steps,
    display_labels,
    empty_figure,
    module_prefix,
    series_color,
    series_dash,
    short_labels,
    shorten,
    tensor_label,
)
from ckptboard.dashboard.figures.stepless import on_position_axis

__all__ = ["STATISTICS", "scalar_columns", "smooth", "draw_lines", "legend_height", "add_smoothed_line",
           "scalar_figure", "scalar_series"]

# column -> label, for the statistic picker; tensor-table columns first, then update-table columns.
STATISTICS: dict[str, str] = {
    "norm": "L2 norm",
    "mean": "mean",
    "std": "standard deviation",
    "max_abs": "max |x|",
    "abs_mean": "mean |x|",
    "min": "min",
    "max": "max",
    "zeros": "zeros",
    "nans": "NaNs",
    "infs": "±Infs",
    "update_norm": "update norm ‖Δ‖",
    "update_ratio": "update ratio ‖Δ‖/‖w‖",
    "cosine": "cosine to previous",
    "dist_from_first": "distance from first ‖w−w₀‖",
    "rel_dist_from_first": "relative distance from first",
}

# How a module aggregates each statistic over its parameters.
_RSS = ("norm", "update_norm", "dist_from_first")
_SUM = ("zeros", "nans", "infs", "posinfs", "neginfs")
_WEIGHTED = ("mean", "abs_mean", "cosine")
_MODULE_STATS = frozenset(_RSS + _SUM + _WEIGHTED + ("std", "min", "max", "max_abs", "update_ratio",
                                                      "rel_dist_from_first"))
_KEYS = ["run", "checkpoint", "step"]
_BASE_COLUMNS = (*_KEYS, "group", "name", "module", "kind", "numel")
# Beyond the base: what each statistic reads (update statistics: their row's and the norms a module ratio needs).
_STAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "std": ("std", "mean"),
    "max_abs": ("min", "max"),
    "infs": ("infs", "posinfs", "neginfs"),
    **{c: (c, "prev_checkpoint", "prev_step", "update_norm", "dist_from_first", "norm")
       for c in UPDATE_COLUMNS if c in STATISTICS},
}


def scalar_columns(stat: str) -> tuple[str, ...]:
    """The columns :func:`scalar_figure` reads of ``stat`` (each table takes those it has): a view reads only these."""
    return tuple(dict.fromkeys(_BASE_COLUMNS + _STAT_COLUMNS.get(stat, (stat,))))


def smooth(values: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average; NaN/Inf values pass through and do not poison it.

    ``last = last·w + (1−w)·x`` over the finite values, each divided by ``1 − w^t`` (t = finite values so far);
    a constant series is returned as is, like TensorBoard.
    """
    if not 0.0 <= weight < 1.0:
        raise UsageError(f"smoothing weight must be in [0, 1), got {weight}")
    y = np.asarray(values, dtype=float)
    finite = np.isfinite(y)
    if weight == 0.0 or not finite.any() or np.ptp(y[finite]) == 0.0:
        return y.copy()
    out = y.copy()
    last, t = 0.0, 0
    for i in np.flatnonzero(finite):
        last = last * weight + (1.0 - weight) * y[i]
        t += 1
        out[i] = last / (1.0 - weight**t)
    return out


def _tensor_values(tables: StatsTables, stat: str) -> pd.DataFrame:
    """Long rows ``run, checkpoint, step, group, name, module, kind, numel, value`` of ``stat`` per tensor
    (update statistics also carry ``prev_checkpoint``, ``update_norm`` and ``dist_from_first``)."""
    t = tables.tensors
    base = t[_KEYS + ["group", "name", "module", "kind", "numel"]]
    if stat in UPDATE_COLUMNS:
        extra = [c for c in ("prev_checkpoint", "update_norm", "dist_from_first") if c != stat]
        u = tables.updates[_KEYS + ["group", "name", stat] + extra]
        return u.merge(base, on=_KEYS + ["group", "name"], how="inner").rename(columns={stat: "value"})
    if stat == "max_abs":
        value = np.fmax(t["min"].abs(), t["max"].abs())
    elif stat == "infs" and "posinfs" in t:
        value = t["posinfs"].fillna(0) + t["neginfs"].fillna(0)
    elif stat in t.columns and (stat in STATISTICS or stat in PERCENTILE_COLUMNS):
        value = t[stat]
    else:
        raise UsageError(f"unknown statistic {stat!r}; choose one of {', '.join(STATISTICS)} or a percentile column")
    out = base.assign(value=pd.to_numeric(value, errors="coerce"))
    return out.assign(mean=pd.to_numeric(t["mean"], errors="coerce")) if stat == "std" else out


def _norm_at(tables: StatsTables, rows: pd.DataFrame, checkpoint: pd.Series) -> np.ndarray:
    """The norm of each row's tensor at ``checkpoint`` (same run, group, name), NaN where absent."""
    t = tables.tensors[["run", "checkpoint", "group", "name", "norm"]]
    key = rows[["run", "group", "name"]].assign(checkpoint=checkpoint.to_numpy())
    return key.merge(t, on=["run", "checkpoint", "group", "name"], how="left")["norm"].to_numpy(dtype=float)


def _module_values(tables: StatsTables, stat: str, rows: pd.DataFrame) -> pd.DataFrame:
    """Aggregate ``rows`` (parameters, each tagged with its module ``series``) to one value per series and
    checkpoint, as the module doc says; a NaN in any tensor makes the module's value NaN (its norm really is)."""
    if stat not in _MODULE_STATS:
        raise UsageError(f"statistic {stat!r} cannot be aggregated over a module; pick tensors instead")
    keys = ["series"] + _KEYS
    v, w = rows["value"].to_numpy(dtype=float), rows["numel"].to_numpy(dtype=float)
    g = rows[keys].assign(x=v)
    if stat == "update_ratio":  # ‖Δ‖ over ‖w_prev‖, both over the whole module
        num, den = rows["update_norm"].to_numpy(dtype=float), _norm_at(tables, rows, rows["prev_checkpoint"])
    elif stat == "rel_dist_from_first":  # ‖w − w₀‖ over ‖w₀‖
        first = tables.checkpoints.sort_values("step", kind="stable").groupby("run")["checkpoint"].first()
        num, den = rows["dist_from_first"].to_numpy(dtype=float), _norm_at(tables, rows, rows["run"].map(first))
    if stat in ("update_ratio", "rel_dist_from_first"):
        g = g.assign(x=num, num=num**2, den=den**2)
        agg = g.groupby(keys, sort=False)[["num", "den"]].sum()
        value = np.sqrt(agg["num"] / agg["den"].replace(0.0, np.nan))
    elif stat in _RSS:
        value = np.sqrt(g.assign(x2=v**2).groupby(keys, sort=False)["x2"].sum())
    elif stat in _SUM:
        value = g.groupby(keys, sort=False)["x"].sum()
    elif stat in ("max", "max_abs"):
        value = g.groupby(keys, sort=False)["x"].max()
    elif stat == "min":
        value = g.groupby(keys, sort=False)["x"].min()
    elif stat in _WEIGHTED:
        agg = g.assign(xw=v * w, w=w).groupby(keys, sort=False)[["xw", "w"]].sum()
        value = agg["xw"] / agg["w"]
    else:  # std, pooled from each tensor's mean and std
        mu = rows["mean"].to_numpy(dtype=float)
        g = g.assign(x=v + mu, s=w * (v**2 + mu**2), m=w * mu, w=w)
        agg = g.groupby(keys, sort=False)[["s", "m", "w"]].sum()
        value = np.sqrt(np.maximum(agg["s"] / agg["w"] - (agg["m"] / agg["w"]) ** 2, 0.0))
    has_nan = g.assign(n=np.isnan(g["x"].to_numpy(dtype=float))).groupby(keys, sort=False)["n"].any()
    return value.mask(has_nan.reindex(value.index, fill_value=False)).rename("value").reset_index()


def _module_rows(params: pd.DataFrame, module: str) -> pd.DataFrame:
    """Parameters under ``module`` (``group:module`` picks one state_dict), tagged with their series: one per
    group, so that a model and its EMA copy are never summed together."""
    group, sep, prefix = module.rpartition(":")
    rows = params[module_prefix(params["module"], prefix)]
    if sep:
        rows = rows[rows["group"] == group]
    label = prefix or "(all parameters)"
    groups = rows["group"].fillna("").astype(str)
    return rows.assign(series=np.where(groups == "", label, groups + ":" + label))


@on_position_axis
def scalar_series(
    tables: StatsTables,
    stat: str,
    *,
    tensors: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
    runs: Sequence[str] | None = None,
    step_range: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Long ``run, series, step, value`` rows behind :func:`scalar_figure`, sorted by run, series, step."""
    values = _tensor_values(tables, stat)
    if runs is not None:
        values = values[values["run"].isin(list(runs))]
    if step_range is not None:
        values = values[values["step"].between(step_range[0], step_range[1])]
    parts = []
    if tensors:
        wanted = set(tensors)
        labels = display_labels(values)
        qualified = np.array([tensor_label(g, n) for g, n in zip(values["group"], values["name"])], dtype=object)
        hit = values["name"].isin(wanted).to_numpy() | np.isin(qualified, list(wanted))
        parts.append(values[hit][["run", "step", "value"]].assign(series=labels[hit]))
    if modules or not tensors:
        params = values[values["kind"] == "parameter"]
        tagged = [_module_rows(params, m) for m in dict.fromkeys(modules or [""])]
        tagged = [rows for rows in tagged if len(rows)]
        if tagged:
            parts.append(_module_values(tables, stat, pd.concat(tagged))[["run", "step", "value", "series"]])
    if not parts:
        return pd.DataFrame(columns=["run", "series", "step", "value"])
    out = pd.concat(parts, ignore_index=True)[["run", "series", "step", "value"]]
    return out.sort_values(["run", "series", "step"], kind="stable").reset_index(drop=True)


def draw_lines(fig: go.Figure, data: pd.DataFrame, by: str, *, smoothing: float, max_points: int, label: str) -> int:
    """One smoothed line per (run, ``by``) of ``data`` (columns ``run``, ``by``, ``step``, ``value``, sorted by
    step), at most ``max_points`` steps each; returns the number of legend rows (for :func:`legend_height`).

    Several runs: colour per run, dash per ``by`` value, lines named ``by · run`` on hover, and the legend holds one
    entry per run (a click hides or shows the run's lines) and one per ``by`` value. One run: colour per line,
    one entry each. Long names are shortened in the legend, never into two equal ones."""
    runs_drawn = sorted(data["run"].unique())
    series_drawn = sorted(data[by].unique())
    several_runs = len(runs_drawn) > 1
    short = dict(zip(series_drawn, short_labels([str(x) for x in series_drawn], _LEGEND_WIDTH)))
    for (run, series), df in data.groupby(["run", by], sort=True):
        keep = df["step"].isin(decimate_steps(df["step"], max_points)).to_numpy()
        x, raw = df["step"].to_numpy()[keep], df["value"].to_numpy(dtype=float)
        s_i, r_i = series_drawn.index(series), runs_drawn.index(run)
        name = f"{series} · {run}" if several_runs else str(series)
        add_smoothed_line(
            fig, x, raw, keep, name=name, color=series_color(r_i if several_runs else s_i), smoothing=smoothing,
            meta={"run": run, by: series}, label=label, dash=series_dash(s_i) if several_runs else "solid",
            group=str(run) if several_runs else name, legend_name=None if several_runs else short[series],
        )  # fmt: skip
    if not several_runs:
        return len(series_drawn)
    for r_i, run in enumerate(runs_drawn):  # legend only: a click hides or shows the run's lines
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="lines", name=shorten(run, _LEGEND_WIDTH), legendgroup=str(run),
            line={"color": series_color(r_i), "width": 3}, meta={"legend": "run", "run": run},
            legendgrouptitle_text="runs" if r_i == 0 else None,
        ))
    for s_i, series in enumerate(series_drawn):
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="lines", name=short[series], legendgroup=f"~{series}",
            line={"color": "#555", "dash": series_dash(s_i), "width": 2}, meta={"legend": "series"},
            legendgrouptitle_text="tensors / modules" if s_i == 0 else None,
        ))
    return len(series_drawn) + len(runs_drawn) + 2  # two group titles


def legend_height(entries: int, minimum: int = 460) -> int:
    """A figure height (at least ``minimum``) at which a legend of ``entries`` rows shows every row."""
    return max(minimum, _LEGEND_ROW_PX * entries + _MARGINS_PX)


def add_smoothed_line(fig: go.Figure, x: np.ndarray, raw: np.ndarray, keep: np.ndarray, *, name: str, color: str,
                      smoothing: float, meta: dict, label: str, dash: str = "solid", group: str | None = None,
                      legend_name: str | None = None) -> None:
    """One series as TensorBoard draws it: the smoothed line over ``x`` (the kept points of ``raw``), and with
    smoothing the raw line faint behind it; ``meta`` gains ``raw`` True/False. With ``legend_name`` the line has
    its own legend entry; without it, its ``group``'s entry (drawn by the caller) stands for it."""
    line = {"color": color, "dash": dash}
    group = group or name
    if smoothing > 0:
        fig.add_trace(go.Scatter(
            x=x, y=raw[keep], mode="lines", line={**line, "width": 1}, opacity=0.25,
            legendgroup=group, showlegend=False, hoverinfo="skip", name=name, meta={**meta, "raw": True},
        ))
    fig.add_trace(go.Scatter(
        x=x, y=smooth(raw, smoothing)[keep], mode="lines", line={**line, "width": 2}, name=legend_name or name,
        legendgroup=group, showlegend=legend_name is not None, meta={**meta, "raw": False},
        hovertemplate=f"{name}<br>step %{{x}}<br>{label} %{{y:.4g}}<extra></extra>",
    ))


@on_position_axis
def scalar_figure(
    tables: StatsTables,
    stat: str,
    *,
    tensors: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
    runs: Sequence[str] | None = None,
    smoothing: float = 0.0,
    log_y: bool = False,
    step_range: tuple[int, int] | None = None,
    max_points: int = 500,
) -> go.Figure:
    """``stat`` over step, one line per (run, tensor or module), runs overlaid; with smoothing the raw line stays
    faint behind the smoothed one, as in TensorBoard. Nothing chosen means all parameters of each run."""
    smooth([], smoothing)  # validates the weight before any work
    data = scalar_series(tables, stat, tensors=tensors, modules=modules, runs=runs, step_range=step_range)
    label = STATISTICS.get(stat, stat)
    if data.empty:
        return empty_figure(f"No {label} values for this selection")
    fig = go.Figure()
    entries = draw_lines(fig, data, "series", smoothing=smoothing, max_points=max_points, label=label)
    fig.update_layout(title=label, xaxis_title="step", yaxis_title=label, hovermode="x unified",
                      height=legend_height(entries), yaxis_type="log" if log_y else "linear",
                      legend={"groupclick": "togglegroup", "tracegroupgap": 4})
    return fig


# One legend entry (each run is its own legend group: a row plus the group gap), and the figure's title and axis
# margins: the figure grows so that the legend never scrolls a run out of sight.
_LEGEND_ROW_PX = 24
_MARGINS_PX = 200
_LEGEND_WIDTH = 44
