"""Analyses over the statistics tables: health findings, frozen tensors, run summaries, two checkpoints compared.

Pure pandas over a :class:`~ckptboard.core.schema.StatsTables` (no figures, no files): the dashboard's views, the
report and notebooks call the same functions.

Health: one row per finding; ``(run, group, name)`` lead to the tensor's charts (``name`` is the norm layer's module
for ``dead-bn-channel``). Checks (:class:`HealthCheck`), in the order they are listed:

- ``non-finite`` (error): a tensor holds NaN/±Inf; one row per tensor at the first checkpoint where it does.
- ``exploding-norm`` (warning): a parameter's norm exceeds ``explode_factor`` × its norm at its first checkpoint;
  row at the largest ratio. Parameters that start near zero (RMS = norm/√numel below ``explode_min_rms``: biases,
  zero-initialised layers) are skipped: they grow by large factors simply by learning.
- ``dead-bn-channel`` (warning): channels with ``running_var < dead_var`` at the run's last checkpoint.
- ``unchanged-across-run`` (warning; info when the parameter is classified frozen): a parameter whose every
  update in a run of two or more checkpoints has ``update_norm == 0`` (the same test as :func:`frozen_tensors`).
- ``largest-update-ratio`` (info): the ``LARGEST_UPDATES`` largest finite parameter update ratios of each run.

Compare: the relative change of a tensor is ``‖b − a‖ / ‖a‖``. It is exact (``method == "exact"``) when the
cache holds ``‖b − a‖``: the pair is consecutive in its run (``update_norm``), or one of them is the run's first
checkpoint (``dist_from_first``). Otherwise (other pairs, two runs) it is the lower bound that the statistics allow,
``√(n·((μb − μa)² + (σb − σa)²)) / ‖a‖`` (``method == "lower bound"``; a true bound for population std,
since the std of a difference is at least the difference of the stds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ckptboard.core.errors import UsageError
from ckptboard.core.health_prefilter import health_rows
from ckptboard.core.records import StrEnum, TensorKind, Trainable
from ckptboard.core.schema import StatsTables, format_shape, tensor_label

__all__ = [
    "HEALTH_COLUMNS",
    "HealthCheck",
    "Severity",
    "LARGEST_UPDATES",
    "health_table",
    "frozen_tensors",
    "run_summary",
    "error_cards",
    "bn_modules",
    "CHANGE_COLUMNS",
    "ChangeMethod",
    "CompareResult",
    "compare_checkpoints",
]

HEALTH_COLUMNS: tuple[str, ...] = (
    "check", "severity", "run", "checkpoint", "step", "group", "name", "value", "detail",
)


class HealthCheck(StrEnum):
    """The health checks, in the order the table lists them (within a severity)."""

    NON_FINITE = "non-finite"
    EXPLODING_NORM = "exploding-norm"
    DEAD_BN_CHANNEL = "dead-bn-channel"
    UNCHANGED_ACROSS_RUN = "unchanged-across-run"
    LARGEST_UPDATE_RATIO = "largest-update-ratio"


class Severity(StrEnum):
    """How bad a finding is, most severe first."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


LARGEST_UPDATES = 10
_KEYS = ["run", "group", "name"]
_PARAMETER = str(TensorKind.PARAMETER)


def _non_finite(tables: StatsTables) -> pd.DataFrame:
    t = tables.tensors
    bad_count = t["nans"].fillna(0) + t["posinfs"].fillna(0) + t["neginfs"].fillna(0)
    bad = t[bad_count > 0].assign(value=bad_count[bad_count > 0]).sort_values("step", kind="stable")
    if bad.empty:
        return bad
    n_bad = bad.groupby(_KEYS)["checkpoint"].transform("size")
    n_all = t.groupby(_KEYS)["checkpoint"].size().rename("n_all")
    first = bad.assign(n_bad=n_bad).drop_duplicates(_KEYS, keep="first").join(n_all, on=_KEYS)
    detail = [
        f"{int(nn)} NaN, {int(pi) + int(ni)} ±Inf at step {s}; non-finite in {int(k)} of {int(a)} checkpoints"
        for nn, pi, ni, s, k, a in zip(first["nans"].fillna(0), first["posinfs"].fillna(0), first["neginfs"].fillna(0),
                                       first["step"], first["n_bad"], first["n_all"])
    ]
    return first.assign(check=HealthCheck.NON_FINITE.value, severity=Severity.ERROR.value, detail=detail)


def _exploding(tables: StatsTables, factor: float, min_rms: float) -> pd.DataFrame:
    t = tables.tensors
    p = t[t["kind"] == _PARAMETER].sort_values("step", kind="stable")
    first = p.groupby(_KEYS)["norm"].transform("first")
    first_rms = first / np.sqrt(p["numel"].astype(float).clip(lower=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = p["norm"] / first.where((first > 0) & (first_rms >= min_rms))
    p = p.assign(value=ratio, first_norm=first)[ratio > factor]
    if p.empty:
        return p
    worst = p.sort_values("value", ascending=False, kind="stable").drop_duplicates(_KEYS, keep="first")
    detail = [f"norm {n:.4g} at step {s} is {r:.3g}× its first norm {f:.4g} (threshold {factor:g}×)"
              for n, s, r, f in zip(worst["norm"], worst["step"], worst["value"], worst["first_norm"])]
    return worst.assign(check=HealthCheck.EXPLODING_NORM.value, severity=Severity.WARNING.value, detail=detail)


def _dead_bn(tables: StatsTables, dead_var: float) -> pd.DataFrame:
    bn = tables.batchnorm
    if bn.empty:
        return bn
    last_step = bn.groupby("run")["step"].transform("max")
    last = bn[bn["step"] == last_step]
    rows = []
    for (run, ckpt, step, group, module), df in last.groupby(["run", "checkpoint", "step", "group", "module"]):
        dead = df.loc[df["running_var"] < dead_var, "channel"].astype(int).tolist()
        if dead:
            shown = ", ".join(map(str, dead[:16])) + (", …" if len(dead) > 16 else "")
            rows.append({"run": run, "checkpoint": ckpt, "step": step, "group": group, "name": module,
                         "value": float(len(dead)), "check": HealthCheck.DEAD_BN_CHANNEL.value,
                         "severity": Severity.WARNING.value,
                         "detail": f"{len(dead)} of {len(df)} channels have running_var < {dead_var:g}: [{shown}]"})
    return pd.DataFrame(rows)


def _all_zero_updates(updates: pd.DataFrame) -> pd.DataFrame:
    """Per ``(run, group, name)`` whose every update has ``update_norm == 0`` (a NaN is no proof of identity):
    module, kind, ``n_updates``, and the last update's checkpoint and step; sorted by the keys."""
    u = updates.sort_values("step", kind="stable")
    agg = (u.assign(_moved=u["update_norm"] != 0)
           .groupby(_KEYS, sort=True, dropna=False)
           .agg(module=("module", "first"), kind=("kind", "first"), n_updates=("update_norm", "size"),
                moved=("_moved", "any"), checkpoint=("checkpoint", "last"), step=("step", "max"))
           .reset_index())
    return agg[~agg["moved"]].drop(columns="moved").reset_index(drop=True)


def _unchanged(tables: StatsTables) -> pd.DataFrame:
    u = tables.updates
    u = u[u["kind"] == _PARAMETER]
    if u.empty:
        return u
    agg = _all_zero_updates(u)
    if agg.empty:
        return agg
    trainable = tables.tensors.drop_duplicates(_KEYS, keep="last").set_index(_KEYS)["trainable"]
    frozen = trainable.reindex(pd.MultiIndex.from_frame(agg[_KEYS])).astype(str).eq(str(Trainable.FALSE)).to_numpy()
    detail = [f"identical in all {int(n) + 1} checkpoints" + (" (classified frozen: expected)" if f else "")
              for n, f in zip(agg["n_updates"], frozen)]
    return agg.assign(value=0.0, check=HealthCheck.UNCHANGED_ACROSS_RUN.value,
                      severity=np.where(frozen, Severity.INFO.value, Severity.WARNING.value), detail=detail)


def _largest_updates(tables: StatsTables) -> pd.DataFrame:
    u = tables.updates
    u = u[(u["kind"] == _PARAMETER)
          & np.isfinite(pd.to_numeric(u["update_ratio"], errors="coerce").to_numpy(dtype=float))]
    if u.empty:
        return u
    top = u.sort_values("update_ratio", ascending=False, kind="stable").groupby("run").head(LARGEST_UPDATES)
    detail = [f"‖Δ‖/‖w‖ from step {a} to {b} (‖Δ‖ = {n:.4g})"
              for a, b, n in zip(top["prev_step"], top["step"], top["update_norm"])]
    return top.assign(value=top["update_ratio"], check=HealthCheck.LARGEST_UPDATE_RATIO.value,
                      severity=Severity.INFO.value, detail=detail)


def health_table(tables: StatsTables, *, dead_var: float = 1e-8, explode_factor: float = 10.0,
                 explode_min_rms: float = 1e-2) -> pd.DataFrame:
    """One row per finding (columns ``HEALTH_COLUMNS``), errors first, then by check, run and value.

    Over a dataset view, only the rows that can matter become pandas (:mod:`~ckptboard.core.health_prefilter`)."""
    if hasattr(tables, "dataset"):
        tables = health_rows(tables, explode_factor, LARGEST_UPDATES)
    parts = [
        _non_finite(tables), _exploding(tables, explode_factor, explode_min_rms), _dead_bn(tables, dead_var),
        _unchanged(tables), _largest_updates(tables),
    ]
    parts = [p.reindex(columns=list(HEALTH_COLUMNS)) for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=list(HEALTH_COLUMNS))
    out = pd.concat(parts, ignore_index=True)
    order = (out["severity"].map({str(s): i for i, s in enumerate(Severity)}),
             out["check"].map({str(c): i for i, c in enumerate(HealthCheck)}))
    out = out.assign(_s=order[0], _c=order[1]).sort_values(
        ["_s", "_c", "run", "value"], ascending=[True, True, True, False], kind="stable")
    return out.drop(columns=["_s", "_c"]).reset_index(drop=True)


# --- tables over runs and checkpoints ---------------------------------------------------------------------------------


def frozen_tensors(tables: StatsTables) -> pd.DataFrame:
    """Tensors identical across their whole run (``update_norm == 0`` at every step): run, group, name, steps."""
    columns = ["run", "group", "name", "module", "kind", "n_updates"]
    if tables.updates.empty:
        return pd.DataFrame(columns=columns)
    return _all_zero_updates(tables.updates)[columns]


def run_summary(tables: StatsTables) -> pd.DataFrame:
    """One row per run: checkpoints summarised, failed, first and last step, tensors in the last checkpoint."""
    ckpts, errors = tables.checkpoints, tables.errors
    runs = sorted(set(ckpts["run"]).union(errors["run"]))
    rows = []
    for run in runs:
        mine = ckpts[ckpts["run"] == run]
        steps = mine["step"].dropna()
        last = mine.sort_values("step").iloc[-1] if len(mine) else None
        rows.append({
            "run": run,
            "checkpoints": len(mine),
            "failed": int((errors["run"] == run).sum()),
            "first_step": steps.min() if len(steps) else None,
            "last_step": steps.max() if len(steps) else None,
            "n_tensors": int(last["n_tensors"]) if last is not None else 0,
        })
    return pd.DataFrame(rows, columns=["run", "checkpoints", "failed", "first_step", "last_step", "n_tensors"])


def error_cards(tables: StatsTables) -> list[dict]:
    """One ``{run, checkpoint, error, message}`` dict per file that could not be summarised, in path order."""
    err = tables.errors.sort_values(["run", "checkpoint"], kind="stable")
    return [
        {k: ("" if pd.isna(row[k]) else str(row[k])) for k in ("run", "checkpoint", "error", "message")}
        for _, row in err.iterrows()
    ]


def bn_modules(tables: StatsTables, run: str) -> pd.DataFrame:
    """Norm layers of ``run`` with their channel count, widest first, then in model order (for pickers, the report)."""
    bn = tables.batchnorm
    bn = bn[bn["run"] == run]
    return (bn.groupby(["group", "module"], sort=False)["channel"].nunique().rename("channels").reset_index()
            .sort_values("channels", ascending=False, kind="stable").reset_index(drop=True))


# --- two checkpoints compared -----------------------------------------------------------------------------------------

CHANGE_COLUMNS: tuple[str, ...] = (
    "group", "name", "module", "kind", "shape", "numel", "norm_a", "norm_b", "abs_change", "rel_change", "method",
    "counter",
)
# Integer and bool tensors (num_batches_tracked, step counters, position ids) count rather than learn: their
# relative change (+1 batch per step) would top every ranking, so they are ranked after the floating tensors.
_COUNTER_DTYPE = re.compile(r"^(u?int\d*|bool)$")
_TENSOR_KEY = ["group", "name"]


class ChangeMethod(StrEnum):
    """How ``abs_change`` was obtained (the ``method`` column of :attr:`CompareResult.changes`)."""

    EXACT = "exact"  # ‖b − a‖ from the updates table
    LOWER_BOUND = "lower bound"  # from the two checkpoints' mean, std and numel


@dataclass
class CompareResult:
    """What changed from ``checkpoint_a`` to ``checkpoint_b``."""

    checkpoint_a: str
    checkpoint_b: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reshaped: list[tuple[str, str, str]] = field(default_factory=list)  # (name, shape in a, shape in b)
    changes: pd.DataFrame = field(default_factory=pd.DataFrame)


def _rows(tables: StatsTables, checkpoint: str) -> pd.DataFrame:
    rows = tables.tensors[tables.tensors["checkpoint"] == checkpoint]
    if rows.empty:
        raise UsageError(f"checkpoint {checkpoint!r} has no statistics in the cache; pick one from the overview")
    return rows.drop_duplicates(_TENSOR_KEY, keep="last").assign(shape=lambda d: d["shape"].map(format_shape))


def _exact_distance(tables: StatsTables, run_a: str, a: str, run_b: str, b: str) -> pd.Series:
    """``‖b − a‖`` per (group, name) where the updates table holds it, else empty."""
    if run_a != run_b:
        return pd.Series(dtype=float)
    u = tables.updates[tables.updates["run"] == run_a]
    forward = (u["checkpoint"] == b) & (u["prev_checkpoint"] == a)
    pair = u[forward | ((u["checkpoint"] == a) & (u["prev_checkpoint"] == b))]
    if not pair.empty:
        return pair.set_index(_TENSOR_KEY)["update_norm"].astype(float)
    ck = tables.checkpoints[tables.checkpoints["run"] == run_a].sort_values("step", kind="stable")
    first = ck["checkpoint"].iloc[0] if len(ck) else None
    other = b if a == first else a if b == first else None
    if other is None:
        return pd.Series(dtype=float)
    return u[u["checkpoint"] == other].set_index(_TENSOR_KEY)["dist_from_first"].astype(float)


def compare_checkpoints(tables: StatsTables, checkpoint_a: str, checkpoint_b: str) -> CompareResult:
    """Tensors added/removed/reshaped and the relative change per common tensor, largest first (NaN last)."""
    a, b = _rows(tables, checkpoint_a), _rows(tables, checkpoint_b)
    ka, kb = a.set_index(_TENSOR_KEY), b.set_index(_TENSOR_KEY)
    label = lambda keys: [tensor_label(g, n) for g, n in keys]  # noqa: E731
    added = label(kb.index.difference(ka.index))
    removed = label(ka.index.difference(kb.index))
    common = ka.index.intersection(kb.index, sort=False)
    shape_a, shape_b = ka.loc[common, "shape"], kb.loc[common, "shape"]
    differs = (shape_a != shape_b).to_numpy()
    reshaped = [(tensor_label(*k), sa, sb) for k, sa, sb in zip(common[differs], shape_a[differs], shape_b[differs])]
    same = common[~differs]
    ra, rb = ka.loc[same], kb.loc[same]
    n = ra["numel"].to_numpy(dtype=float)
    bound = np.sqrt(n * ((rb["mean"].to_numpy(dtype=float) - ra["mean"].to_numpy(dtype=float)) ** 2
                         + (rb["std"].to_numpy(dtype=float) - ra["std"].to_numpy(dtype=float)) ** 2))
    if checkpoint_a == checkpoint_b:
        exact = pd.Series(0.0, index=same)
    else:
        exact = _exact_distance(tables, a["run"].iloc[0], checkpoint_a, b["run"].iloc[0], checkpoint_b)
        exact = exact[~exact.index.duplicated(keep="last")].reindex(same)
    has_exact = exact.notna().to_numpy()
    dist = np.where(has_exact, exact.to_numpy(dtype=float), bound)
    norm_a = ra["norm"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A zero ‖a‖ gives 0 (no change) or inf; a NaN anywhere stays NaN and sorts last.
        rel = np.select([norm_a > 0, (norm_a == 0) & (dist == 0), (norm_a == 0) & (dist > 0)],
                        [dist / norm_a, 0.0, np.inf], default=np.nan)
    changes = pd.DataFrame({
        "group": same.get_level_values(0), "name": same.get_level_values(1),
        "module": ra["module"].to_numpy(), "kind": ra["kind"].to_numpy(), "shape": ra["shape"].to_numpy(),
        "numel": ra["numel"].to_numpy(), "norm_a": norm_a, "norm_b": rb["norm"].to_numpy(dtype=float),
        "abs_change": dist, "rel_change": rel,
        "method": np.where(has_exact, ChangeMethod.EXACT.value, ChangeMethod.LOWER_BOUND.value),
        "counter": ra["dtype"].astype(str).str.match(_COUNTER_DTYPE).to_numpy(dtype=bool),
    }, columns=list(CHANGE_COLUMNS))
    changes = changes.sort_values("rel_change", ascending=False, na_position="last", kind="stable")
    changes = changes.sort_values("counter", kind="stable")  # floats first, each part largest first
    return CompareResult(checkpoint_a, checkpoint_b, added, removed, reshaped, changes.reset_index(drop=True))
