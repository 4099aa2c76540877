"""A synthetic :class:`StatsTables` that follows core/schema.py, for figure, report and app tests and benchmarks.

``synthetic_tables(n_checkpoints, n_tensors, runs, seed)`` builds ``runs`` full runs (``run0``, ``run1``, …) of
``n_checkpoints`` checkpoints × ``n_tensors`` tensors, plus the edge cases every view must survive:

- ``single``: a run with one checkpoint (no updates, nothing to compare with);
- one-element tensors: every ``*.bn.num_batches_tracked`` (shape ``[]``) and ``temperature`` (shape ``[1]``),
  whose histogram is one bf16-wide bin holding the value (as core/histogram.py makes it);
- NaN statistics: ``fc.bias`` in ``run0`` holds NaNs in its last 3 checkpoints (``nans == 2``, moments and
  percentiles NaN, empty histogram);
- an unreadable file: ``run0/ckpt_broken.pt`` in the errors table;
- a dead BatchNorm channel: channel 0 of ``block0.bn`` in ``run0`` has ``running_var == 1e-10`` throughout;
- a frozen parameter: ``embed.weight`` never changes (``update_norm == 0``);
- an added tensor: ``head.extra.weight`` appears halfway through ``run1`` (an ``added`` event).

Statistics are consistent with a normal distribution of the given mean/std: ``p_q = mean + std·z_q``,
``min = p0``, ``max = p100`` (z = ∓3.5), histograms are 30 bins of a normal over [min, max].
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ckptboard.core.schema import (
    BATCHNORM_COLUMNS,
    CHECKPOINT_COLUMNS,
    ERROR_COLUMNS,
    TRAINING_SCALAR_COLUMNS,
    EVENT_COLUMNS,
    HISTOGRAM_COLUMNS,
    PERCENTILE_COLUMNS,
    PERCENTILES,
    TENSOR_COLUMNS,
    UPDATE_COLUMNS,
    StatsTables,
)

__all__ = ["synthetic_tables", "BN_CHANNELS", "STEP_EVERY"]

BN_CHANNELS = 8
STEP_EVERY = 100  # checkpoint i of a run is at step i * STEP_EVERY
_HIST_BINS = 30
_Z_EDGES = np.linspace(-3.5, 3.5, _HIST_BINS + 1)
# Standard-normal z of every PERCENTILES entry (p0/p100 clipped to ±3.5 like min/max).
_Z = {
    0.0: -3.5, 1.0: -2.326, 5.0: -1.645, 6.68: -1.5, 15.87: -1.0, 25.0: -0.674, 30.85: -0.5, 50.0: 0.0,
    69.15: 0.5, 75.0: 0.674, 84.13: 1.0, 93.32: 1.5, 95.0: 1.645, 99.0: 2.326, 100.0: 3.5,
}


def _model(n_tensors: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, kind, shape) of a conv/BN stack cut to ``n_tensors``, ending with the edge-case tensors."""
    tail = [
        ("embed.weight", "parameter", (16, 8)),
        ("temperature", "parameter", (1,)),
        ("fc.weight", "parameter", (10, 16)),
        ("fc.bias", "parameter", (10,)),
    ]
    body: list[tuple[str, str, tuple[int, ...]]] = []
    block = 0
    while len(body) < max(n_tensors - len(tail), 0):
        c = BN_CHANNELS
        body += [
            (f"block{block}.conv.weight", "parameter", (c, c, 3, 3)),
            (f"block{block}.bn.weight", "parameter", (c,)),
            (f"block{block}.bn.bias", "parameter", (c,)),
            (f"block{block}.bn.running_mean", "buffer", (c,)),
            (f"block{block}.bn.running_var", "buffer", (c,)),
            (f"block{block}.bn.num_batches_tracked", "buffer", ()),
        ]
        block += 1
    return (body[: max(n_tensors - len(tail), 0)] + tail)[-n_tensors:]


def _run_tables(run: str, n_ckpt: int, model, rng: np.random.Generator, *, added_half: bool, nan_tail: bool):
    """Tensors, histograms, updates, batchnorm and checkpoints rows of one run, vectorised over (ckpt, tensor)."""
    names = [m[0] for m in model]
    kinds = np.array([m[1] for m in model])
    shapes = [m[2] for m in model]
    numel = np.array([int(np.prod(s)) if s else 1 for s in shapes])
    n_t = len(model)
    ckpts = [f"{run}/ckpt_{i:05d}.pt" for i in range(n_ckpt)]
    steps = np.arange(n_ckpt) * STEP_EVERY

    # Per tensor a base std and drift; per checkpoint the std grows 20 % over the run, with noise.
    base_std = rng.uniform(0.05, 1.0, n_t)
    base_mean = rng.normal(0.0, 0.05, n_t)
    frac = (np.arange(n_ckpt) / max(n_ckpt - 1, 1))[:, None]
    std = base_std[None, :] * (1 + 0.2 * frac) * (1 + 0.01 * rng.standard_normal((n_ckpt, n_t)))
    mean = base_mean[None, :] + 0.01 * frac * rng.standard_normal((1, n_t))
    frozen = np.array([n == "embed.weight" for n in names])
    std[:, frozen] = std[0, frozen]
    mean[:, frozen] = mean[0, frozen]
    nbt = np.array([n.endswith("num_batches_tracked") for n in names])
    mean[:, nbt] = steps[:, None]  # num_batches_tracked counts steps
    std[:, nbt] = 0.0
    one = numel == 1
    std[:, one] = 0.0
    norm = np.sqrt(numel * (std**2 + mean**2))
    present = np.ones((n_ckpt, n_t), bool)
    if added_half:
        names = names + ["head.extra.weight"]
        kinds = np.append(kinds, "parameter")
        shapes = shapes + [(4, 4)]
        numel = np.append(numel, 16)
        extra = lambda a, v: np.concatenate([a, np.full((n_ckpt, 1), v)], axis=1)  # noqa: E731
        std, mean, norm = extra(std, 0.1), extra(mean, 0.0), extra(norm, 0.4)
        frozen, nbt = np.append(frozen, False), np.append(nbt, False)
        present = np.concatenate([present, (np.arange(n_ckpt) >= n_ckpt // 2)[:, None]], axis=1)
        n_t += 1
    nans = np.zeros((n_ckpt, n_t), np.int64)
    if nan_tail:
        j = names.index("fc.bias")
        rows = slice(max(n_ckpt - 3, 0), n_ckpt)
        nans[rows, j] = 2
        mean[rows, j] = std[rows, j] = norm[rows, j] = np.nan

    ci, ti = np.nonzero(present)
    m, s = mean[ci, ti], std[ci, ti]
    tensors = pd.DataFrame({
        "run": run,
        "checkpoint": np.array(ckpts, dtype=object)[ci],
        "step": steps[ci],
        "group": "",
        "name": np.array(names, dtype=object)[ti],
        "raw_name": np.array(names, dtype=object)[ti],
        "module": [names[t].rpartition(".")[0] for t in ti],
        "kind": kinds[ti],
        "trainable": np.where(kinds[ti] == "parameter", np.where(frozen[ti], "false", "true"), "false"),
        "source": np.where(kinds[ti] == "parameter", "synthetic:parameter", "synthetic:buffer"),
        "dtype": np.where(nbt[ti], "int64", "float32"),
        "shape": [json.dumps(list(shapes[t])) for t in ti],
        "numel": numel[ti],
        "nbytes": numel[ti] * np.where(nbt[ti], 8, 4),
        "tied_to": None,
        "mean": m,
        "std": s,
        "min": m - 3.5 * s,
        "max": m + 3.5 * s,
        "abs_mean": np.abs(m) + 0.8 * s,
        "norm": norm[ci, ti],
        "zeros": np.where(nbt[ti] & (steps[ci] == 0), 1, 0),
        "nans": nans[ci, ti],
        "posinfs": 0,
        "neginfs": 0,
        "infs": 0,
    })
    for q, col in zip(PERCENTILES, PERCENTILE_COLUMNS):
        tensors[col] = m + _Z[q] * s

    # Histograms: 30 normal bins over [min, max]; one zero-width bin for constants; none when all NaN.
    pdf = np.exp(-0.5 * ((_Z_EDGES[:-1] + _Z_EDGES[1:]) / 2) ** 2)
    pdf /= pdf.sum()
    lo = m[:, None] + s[:, None] * _Z_EDGES[None, :-1]
    hi = m[:, None] + s[:, None] * _Z_EDGES[None, 1:]
    counts = np.rint(numel[ti][:, None] * pdf[None, :]).astype(np.int64)
    h_lo, h_hi, h_counts = [], [], []
    for r in range(len(ti)):
        if np.isnan(m[r]):
            h_lo.append([]), h_hi.append([]), h_counts.append([])
        elif s[r] == 0.0:  # one bf16-wide bin holding the value on its edge nearer zero (core/histogram.py)
            v = float(m[r])
            ulp = 2.0 ** (np.floor(np.log2(abs(v))) - 7) if v else 2.0**-133
            lo_v, hi_v = (v, v + ulp) if v >= 0 else (v - ulp, v)
            h_lo.append([lo_v]), h_hi.append([hi_v]), h_counts.append([int(numel[ti[r]])])
        else:
            keep = counts[r] > 0
            h_lo.append(lo[r, keep].tolist()), h_hi.append(hi[r, keep].tolist())
            h_counts.append(counts[r, keep].tolist())
    histograms = tensors[["run", "checkpoint", "step", "group", "name"]].copy()
    histograms["lo"], histograms["hi"], histograms["counts"] = h_lo, h_hi, h_counts

    # Updates between consecutive checkpoints; the frozen tensor has update_norm 0.
    upd = tensors[tensors["step"] > 0][["run", "checkpoint", "step", "group", "name", "module", "kind"]].copy()
    if len(upd):
        ci_u, ti_u = ci[tensors["step"].to_numpy() > 0], ti[tensors["step"].to_numpy() > 0]
        prev_norm = norm[ci_u - 1, ti_u]
        first_norm = norm[0, ti_u]
        un = np.where(frozen[ti_u], 0.0, 0.01 * np.abs(prev_norm) * (1 + 0.1 * rng.standard_normal(len(ti_u))))
        upd.insert(3, "prev_checkpoint", np.array(ckpts, dtype=object)[ci_u - 1])
        upd.insert(4, "prev_step", steps[ci_u - 1])
        upd["update_norm"] = un
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for a counter at 0: NaN, as real stats give
            upd["update_ratio"] = un / prev_norm
        upd["cosine"] = np.where(frozen[ti_u], 1.0, 0.999)
        dist = np.where(frozen[ti_u], 0.0, 0.01 * np.abs(first_norm) * np.sqrt(ci_u))
        upd["dist_from_first"] = dist
        with np.errstate(invalid="ignore", divide="ignore"):
            upd["rel_dist_from_first"] = dist / first_norm
        upd = upd[present[ci_u - 1, ti_u]]  # a tensor that appeared mid-run has no update at its first checkpoint
    upd = upd.reindex(columns=list(UPDATE_COLUMNS))

    # BatchNorm long table: running_mean drifts from 0, running_var from 1; a dead channel in run0.
    bn_modules = sorted({n.rpartition(".")[0] for n in names if n.endswith(".bn.running_var")})
    c_idx = np.arange(BN_CHANNELS)
    k, b, c = np.meshgrid(np.arange(n_ckpt), np.arange(len(bn_modules)), c_idx, indexing="ij")
    k, b, c = k.ravel(), b.ravel(), c.ravel()
    drift = k / max(n_ckpt - 1, 1)
    rvar = 1.0 + 0.5 * drift * (1 + 0.1 * c) + 0.01 * rng.standard_normal(len(k))
    if nan_tail and bn_modules:
        rvar[(b == 0) & (c == 0)] = 1e-10
    batchnorm = pd.DataFrame({
        "run": run,
        "checkpoint": np.array(ckpts, dtype=object)[k],
        "step": steps[k],
        "group": "",
        "module": np.array(bn_modules, dtype=object)[b] if bn_modules else np.array([], dtype=object),
        "channel": c,
        "running_mean": 0.1 * drift * (c - BN_CHANNELS / 2) + 0.01 * rng.standard_normal(len(k)),
        "running_var": rvar,
    }).reindex(columns=list(BATCHNORM_COLUMNS))

    size = tensors.groupby("checkpoint", sort=False)["nbytes"].sum()
    par = tensors["kind"] == "parameter"
    checkpoints = pd.DataFrame({
        "run": run,
        "checkpoint": ckpts,
        "step": steps,
        "step_source": "filename",
        "format": "torch-zip",
        "size_bytes": size.reindex(ckpts).to_numpy() + 1024,
        "mtime": 1.7e9 + steps.astype(float),
        "n_tensors": tensors.groupby("checkpoint")["name"].size().reindex(ckpts).to_numpy(),
        "n_parameters": tensors[par].groupby("checkpoint")["name"].size().reindex(ckpts).to_numpy(),
        "n_trainable": tensors[par & (tensors["trainable"] == "true")].groupby("checkpoint")["name"].size()
        .reindex(ckpts).to_numpy(),
        "n_frozen": tensors[par & (tensors["trainable"] == "false")].groupby("checkpoint")["name"].size()
        .reindex(ckpts).to_numpy(),
        "n_buffers": tensors[~par].groupby("checkpoint")["name"].size().reindex(ckpts, fill_value=0).to_numpy(),
        "parameter_bytes": tensors[par].groupby("checkpoint")["nbytes"].sum().reindex(ckpts).to_numpy(),
        "buffer_bytes": tensors[~par].groupby("checkpoint")["nbytes"].sum().reindex(ckpts, fill_value=0).to_numpy(),
        "optimizer": "SGD",
        "metadata_json": [json.dumps({"step": int(s)}) for s in steps],
        "skipped_globals": "",
    })
    events = pd.DataFrame(columns=list(EVENT_COLUMNS))
    if added_half and n_ckpt > 1:
        half = n_ckpt // 2
        events = pd.DataFrame([{
            "run": run, "checkpoint": ckpts[half], "step": int(steps[half]), "group": "",
            "name": "head.extra.weight", "event": "added", "detail": "[4, 4] float32",
        }], columns=list(EVENT_COLUMNS))
    return checkpoints, tensors, histograms, upd, batchnorm, events


def synthetic_tables(n_checkpoints: int = 200, n_tensors: int = 500, runs: int = 2, seed: int = 0) -> StatsTables:
    """``runs`` runs of ``n_checkpoints`` × ``n_tensors``, a one-checkpoint run and an error row (module doc)."""
    rng = np.random.default_rng(seed)
    model = _model(n_tensors)
    parts = []
    for r in range(runs):
        parts.append(_run_tables(f"run{r}", n_checkpoints, model, rng, added_half=(r == 1), nan_tail=(r == 0)))
    parts.append(_run_tables("single", 1, model[:8] + model[-4:], rng, added_half=False, nan_tail=False))
    columns = (CHECKPOINT_COLUMNS, TENSOR_COLUMNS, HISTOGRAM_COLUMNS, UPDATE_COLUMNS, BATCHNORM_COLUMNS, EVENT_COLUMNS)
    frames = []
    for i, cols in enumerate(columns):
        filled = [p[i] for p in parts if len(p[i])]
        frame = pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=list(cols))
        frames.append(frame.reindex(columns=list(cols)))
    errors = pd.DataFrame([{
        "run": "run0", "checkpoint": "run0/ckpt_broken.pt", "error": "CorruptCheckpointError",
        "message": "run0/ckpt_broken.pt: truncated zip archive (central directory missing); re-save the file",
    }], columns=list(ERROR_COLUMNS))
    return StatsTables(
        checkpoints=frames[0], tensors=frames[1], histograms=frames[2], updates=frames[3],
        batchnorm=frames[4], events=frames[5], errors=errors, training_scalars=_training_scalars(frames[0]),
    )


def _training_scalars(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """A loss and a learning rate logged at every checkpoint's step (a Trainer's log_history, say)."""
    rows = [{"run": r, "checkpoint": c, "step": s, "source": "trainer_state.json", "name": name, "value": value}
            for r, c, s in zip(checkpoints["run"], checkpoints["checkpoint"], checkpoints["step"]) if pd.notna(s)
            for name, value in (("loss", 2.0 / (1 + s)), ("learning_rate", 1e-3))]
    return pd.DataFrame(rows, columns=list(TRAINING_SCALAR_COLUMNS))
