"""Health view: non-finite values, unchanged parameters, dead BN channels, exploding norms, largest update ratios.

One row per finding; ``(run, group, name)`` lead to the tensor's charts (``name`` is the norm layer's module
for ``dead-bn-channel``). Checks, in the order they are listed:

- ``non-finite`` (error): a tensor holds NaN/±Inf; one row per tensor at the first checkpoint where it does.
- ``exploding-norm`` (warning): a parameter's norm exceeds ``explode_factor`` × its norm at its first checkpoint;
  row at the largest ratio. Parameters that start near zero (RMS = norm/√numel below ``explode_min_rms``: biases,
  zero-initialised layers) are skipped: they grow by large factors simply by learning.
- ``dead-bn-channel`` (warning): channels with ``running_var < dead_var`` at the run's last checkpoint.
- ``unchanged-across-run`` (warning; info when the parameter is classified frozen): a parameter whose every
  update in a run of two or more checkpoints has ``update_norm == 0``.
- ``largest-update-ratio`` (info): the ``LARGEST_UPDATES`` largest finite parameter update ratios of each run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ckptboard.core.schema import StatsTables

__all__ = ["HEALTH_COLUMNS", "HEALTH_CHECKS", "LARGEST_UPDATES", "health_table"]

HEALTH_COLUMNS: tuple[str, ...] = (
    "check", "severity", "run", "checkpoint", "step", "group", "name", "value", "detail",
)
HEALTH_CHECKS = ("non-finite", "exploding-norm", "dead-bn-channel", "unchanged-across-run", "largest-update-ratio")
LARGEST_UPDATES = 10
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def _non_finite(tables: StatsTables) -> pd.DataFrame:
    t = tables.tensors
    bad_count = t["nans"].fillna(0) + t["posinfs"].fillna(0) + t["neginfs"].fillna(0)
    bad = t[bad_count > 0].assign(value=bad_count[bad_count > 0]).sort_values("step", kind="stable")
    if bad.empty:
        return bad
    keys = ["run", "group", "name"]
    n_bad = bad.groupby(keys)["checkpoint"].transform("size")
    n_all = t.groupby(keys)["checkpoint"].size().rename("n_all")
    first = bad.assign(n_bad=n_bad).drop_duplicates(keys, keep="first").join(n_all, on=keys)
    detail = [
        f"{int(nn)} NaN, {int(pi) + int(ni)} ±Inf at step {s}; non-finite in {int(k)} of {int(a)} checkpoints"
        for nn, pi, ni, s, k, a in zip(first["nans"].fillna(0), first["posinfs"].fillna(0), first["neginfs"].fillna(0),
                                       first["step"], first["n_bad"], first["n_all"])
    ]
    return first.assign(check="non-finite", severity="error", detail=detail)


def _exploding(tables: StatsTables, factor: float, min_rms: float) -> pd.DataFrame:
    t = tables.tensors
    p = t[t["kind"] == "parameter"].sort_values("step", kind="stable")
    keys = ["run", "group", "name"]
    first = p.groupby(keys)["norm"].transform("first")
    first_rms = first / np.sqrt(p["numel"].astype(float).clip(lower=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = p["norm"] / first.where((first > 0) & (first_rms >= min_rms))
    p = p.assign(value=ratio, first_norm=first)[ratio > factor]
    if p.empty:
        return p
    worst = p.sort_values("value", ascending=False, kind="stable").drop_duplicates(keys, keep="first")
    detail = [f"norm {n:.4g} at step {s} is {r:.3g}× its first norm {f:.4g} (threshold {factor:g}×)"
              for n, s, r, f in zip(worst["norm"], worst["step"], worst["value"], worst["first_norm"])]
    return worst.assign(check="exploding-norm", severity="warning", detail=detail)


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
                         "value": float(len(dead)), "check": "dead-bn-channel", "severity": "warning",
                         "detail": f"{len(dead)} of {len(df)} channels have running_var < {dead_var:g}: [{shown}]"})
    return pd.DataFrame(rows)


def _unchanged(tables: StatsTables) -> pd.DataFrame:
    u = tables.updates
    u = u[u["kind"] == "parameter"].sort_values("step", kind="stable")
    if u.empty:
        return u
    keys = ["run", "group", "name"]
    agg = u.groupby(keys).agg(max_update=("update_norm", "max"), checkpoint=("checkpoint", "last"),
                              step=("step", "max"), n=("update_norm", "size")).reset_index()
    agg = agg[agg["max_update"] == 0]
    if agg.empty:
        return agg
    trainable = tables.tensors.drop_duplicates(keys, keep="last").set_index(keys)["trainable"]
    frozen = trainable.reindex(pd.MultiIndex.from_frame(agg[keys])).astype(str).eq("false").to_numpy()
    detail = [f"identical in all {int(n) + 1} checkpoints" + (" (classified frozen: expected)" if f else "")
              for n, f in zip(agg["n"], frozen)]
    return agg.assign(value=0.0, check="unchanged-across-run", severity=np.where(frozen, "info", "warning"),
                      detail=detail)


def _largest_updates(tables: StatsTables) -> pd.DataFrame:
    u = tables.updates
    u = u[(u["kind"] == "parameter")
          & np.isfinite(pd.to_numeric(u["update_ratio"], errors="coerce").to_numpy(dtype=float))]
    if u.empty:
        return u
    top = u.sort_values("update_ratio", ascending=False, kind="stable").groupby("run").head(LARGEST_UPDATES)
    detail = [f"‖Δ‖/‖w‖ from step {a} to {b} (‖Δ‖ = {n:.4g})"
              for a, b, n in zip(top["prev_step"], top["step"], top["update_norm"])]
    return top.assign(value=top["update_ratio"], check="largest-update-ratio", severity="info", detail=detail)


def health_table(tables: StatsTables, *, dead_var: float = 1e-8, explode_factor: float = 10.0,
                 explode_min_rms: float = 1e-2) -> pd.DataFrame:
    """One row per finding (columns ``HEALTH_COLUMNS``), errors first, then by check, run and value."""
    parts = [
        _non_finite(tables), _exploding(tables, explode_factor, explode_min_rms), _dead_bn(tables, dead_var), _unchanged(tables),
        _largest_updates(tables),
    ]
    parts = [p.reindex(columns=list(HEALTH_COLUMNS)) for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=list(HEALTH_COLUMNS))
    out = pd.concat(parts, ignore_index=True)
    order = out["severity"].map(_SEVERITY_ORDER), out["check"].map({c: i for i, c in enumerate(HEALTH_CHECKS)})
    out = out.assign(_s=order[0], _c=order[1]).sort_values(
        ["_s", "_c", "run", "value"], ascending=[True, True, True, False], kind="stable")
    return out.drop(columns=["_s", "_c"]).reset_index(drop=True)
