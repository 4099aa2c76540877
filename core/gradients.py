"""Gradient statistics read back from the optimizer state a checkpoint already holds.

An approximation, stated wherever it is shown: Adam's ``exp_avg`` (m) and ``exp_avg_sq`` (v) are exponential moving
averages of the gradient and of its square (β₁, β₂ from the parameter's ``param_groups`` entry), not one step's
gradient; with the saved ``step`` t their bias-corrected values are m̂ = m / (1 − β₁ᵗ) and v̂ = v / (1 − β₂ᵗ).
Per parameter (sums in float64, streamed in chunks beside the weight):

- ``grad_rms`` = sqrt(mean(v̂)): the RMS of the gradient over the last ~1/(1 − β₂) steps; ``grad_rms_max`` = max √v̂;
- ``m_norm`` = ‖m̂‖: the norm of the gradient's running mean;
- ``update_norm`` = ‖lr · m̂ / (√v̂ + ε)‖ (``max_exp_avg_sq`` in place of v with AMSGrad): the size of Adam's next step
  without weight decay; ``update_rms`` = that / sqrt(numel); ``update_ratio`` = ``update_norm`` / ‖W‖;
- a histogram of √v̂ on the bf16 grid (:mod:`ckptboard.core.histogram`).

SGD with momentum: ``m_norm`` = ‖momentum_buffer‖ (an EMA-like sum of past gradients), ``update_norm`` = lr ·
‖momentum_buffer‖ (torch's SGD without Nesterov); the Adam-only columns are NaN. Parameters without such state
(plain SGD, Adam before its first step) get no row.

Which model tensor each optimizer entry belongs to: by name where the optimizer keys by name (DCP); otherwise its
param groups are laid over the model's trainable tensors in file order, entry by entry by the shape of its state;
where the file order is name order (safetensors sorts its keys), only entries of a shape that occurs once are placed.
Entries not placed keep their index as name (``[3]``) and have no weight norm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ckptboard.core.readings import APPROXIMATION
from ckptboard.core.histogram import N_CODES, Histogram
from ckptboard.core.records import OptimizerParam, OptimizerState, StrEnum, TensorInfo, TensorKind, Trainable
from ckptboard.core.diff import _cpu_kernels
from ckptboard.core.stats import _numpy, add_finite_codes, as_float, iter_chunks
from ckptboard.core.updates import _common_float

__all__ = [
    "MomentKind",
    "GradientStats",
    "adam_stats",
    "sgd_stats",
    "held_tensors",
    "gradient_rows",
    "APPROXIMATION",
]

_NAN = float("nan")
_SHAPED_STATES = ("exp_avg", "momentum_buffer", "exp_avg_sq")


class MomentKind(StrEnum):
    """Which optimizer state the gradient statistics come from."""

    ADAM = "adam"  # exp_avg + exp_avg_sq (Adam, AdamW, and others that keep both)
    SGD_MOMENTUM = "sgd-momentum"  # momentum_buffer


@dataclass
class GradientStats:
    """One parameter's gradient statistics (see the module docstring)."""

    moments: str
    opt_step: float
    lr: float
    numel: int
    grad_rms: float
    grad_rms_max: float
    m_norm: float
    update_norm: float
    update_rms: float
    weight_norm: float
    update_ratio: float
    histogram: Histogram

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        hist = row.pop("histogram")
        return row | {"lo": _floats(hist["lo"]), "hi": _floats(hist["hi"]), "counts": [int(c) for c in hist["counts"]]}


def adam_stats(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: float, *, lr: float, betas: tuple[float, float],
               eps: float, weight: torch.Tensor | None = None, device: str | torch.device = "cpu") -> GradientStats:
    """Gradient statistics from Adam's moments after ``step`` steps (see the module docstring)."""
    b1, b2 = betas
    c1, c2 = 1.0 - b1 ** step, 1.0 - b2 ** step
    dev = torch.device(device)
    tensors = tuple(t.detach() for t in (exp_avg, exp_avg_sq) + ((weight,) if weight is not None else ()))
    kernels = _cpu_kernels() if dev.type == "cpu" else None
    if kernels is not None:
        v_sum, m_sq, u_sq, w_sq, top, counts = _adam_numba(tensors, c1, c2, lr, eps, kernels)
    else:
        v_sum, m_sq, u_sq, w_sq, top, counts = _adam_torch(tensors, c1, c2, lr, eps, dev)
    n = exp_avg.numel()
    update_norm = math.sqrt(u_sq)
    weight_norm = math.sqrt(w_sq) if weight is not None else _NAN
    return GradientStats(
        moments=str(MomentKind.ADAM), opt_step=float(step), lr=float(lr), numel=n,
        grad_rms=math.sqrt(max(v_sum, 0.0) / n) if n else _NAN, grad_rms_max=top if n else _NAN,
        m_norm=math.sqrt(m_sq), update_norm=update_norm, update_rms=update_norm / math.sqrt(n) if n else _NAN,
        weight_norm=weight_norm, update_ratio=_ratio(update_norm, weight_norm),
        histogram=Histogram.from_code_counts(counts),
    )


def _adam_numba(tensors: tuple[torch.Tensor, ...], c1: float, c2: float, lr: float, eps: float, kernels) -> tuple:
    sums = np.zeros(4)
    top = 0.0
    counts = np.zeros(N_CODES, dtype=np.int64)
    scratch = np.empty(kernels.BLOCK, dtype=np.float32)
    for chunk in iter_chunks(*tensors):
        arrays = [_numpy(c) for c in _common_float(chunk)]
        weight = arrays[2] if len(arrays) == 3 else arrays[0]
        *s, t = kernels.adam_chunk(arrays[0], arrays[1], weight, len(arrays) == 3, c1, c2, lr, eps, scratch, counts)
        sums += s
        top = max(top, t)
    return (*sums.tolist(), top, counts)


def _adam_torch(tensors: tuple[torch.Tensor, ...], c1: float, c2: float, lr: float, eps: float,
                dev: torch.device) -> tuple:
    """The sums of :func:`adam_stats` in torch ops on ``dev`` (CUDA), one synchronisation at the end."""
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # v̂, m̂², u², w²
    top = torch.zeros(1, dtype=torch.float64, device=dev)
    counts = torch.zeros(N_CODES, dtype=torch.int64, device=dev)
    for chunk in iter_chunks(*tensors, device=dev):
        m, v = (as_float(c).double() for c in chunk[:2])
        m_hat, v_hat = m / c1, v / c2
        rms = v_hat.clamp(min=0).sqrt()
        u = lr * m_hat / (rms + eps)
        w2 = as_float(chunk[2]).double().square().sum() if len(chunk) == 3 else torch.zeros((), **_f64(dev))
        sums += torch.stack([v_hat.sum(), m_hat.square().sum(), u.square().sum(), w2])
        top = torch.maximum(top, rms.max().reshape(1))
        add_finite_codes(rms, counts)
    return (*sums.tolist(), float(top.item()), counts.cpu().numpy())


def sgd_stats(momentum_buffer: torch.Tensor, *, lr: float, weight: torch.Tensor | None = None,
              device: str | torch.device = "cpu") -> GradientStats:
    """Statistics from SGD's momentum buffer: its norm, and the step lr · buffer (see the module docstring)."""
    dev = torch.device(device)
    sums = torch.zeros(2, dtype=torch.float64, device=dev)
    tensors = (momentum_buffer,) + ((weight,) if weight is not None else ())
    for chunk in iter_chunks(*(t.detach() for t in tensors), device=dev):
        b = as_float(chunk[0]).double()
        w2 = as_float(chunk[1]).double().square().sum() if weight is not None else torch.zeros((), **_f64(dev))
        sums += torch.stack([b.square().sum(), w2])
    b_sq, w_sq = sums.tolist()
    n = momentum_buffer.numel()
    update_norm = abs(lr) * math.sqrt(b_sq)
    weight_norm = math.sqrt(w_sq) if weight is not None else _NAN
    return GradientStats(
        moments=str(MomentKind.SGD_MOMENTUM), opt_step=_NAN, lr=float(lr), numel=n, grad_rms=_NAN,
        grad_rms_max=_NAN, m_norm=math.sqrt(b_sq), update_norm=update_norm,
        update_rms=update_norm / math.sqrt(n) if n else _NAN, weight_norm=weight_norm,
        update_ratio=_ratio(update_norm, weight_norm), histogram=Histogram.empty(),
    )


def held_tensors(ckpt: Any, optimizer: OptimizerState) -> dict[int, TensorInfo]:
    """Index in ``optimizer.params`` -> the model tensor it holds, where that can be told (see the module docstring)."""
    if getattr(optimizer, "by_name", False):
        by_name = {}
        for info in ckpt.tensors:
            by_name.setdefault(info.name, info)
            by_name.setdefault(info.raw_name, info)
        return {i: by_name[p.param_id] for i, p in enumerate(optimizer.params) if p.param_id in by_name}
    best: dict[int, TensorInfo] = {}
    for group in ckpt.groups:
        cands = [t for t in group.tensors
                 if t.kind == TensorKind.PARAMETER and not t.tied_to and t.trainable != Trainable.FALSE]
        names = [t.name for t in cands]
        # safetensors writes its keys sorted, not in the model's parameter order: then only shapes that occur once
        # tell which tensor an entry is (a group already in name order could be either, so it is treated so too)
        placed = _lay_over(optimizer.params, cands) if names != sorted(names) else _by_unique_shape(optimizer.params, cands)
        if len(placed) > len(best):
            best = placed
    return best


def _lay_over(params: list[OptimizerParam], cands: list[TensorInfo]) -> dict[int, TensorInfo]:
    """Each param group in turn over ``cands`` in file order: an entry takes the next unused tensor of its shape."""
    used: set[int] = set()
    placed: dict[int, TensorInfo] = {}
    by_group: dict[int, list[int]] = {}
    for i, p in enumerate(params):
        by_group.setdefault(p.group_index, []).append(i)
    for indices in by_group.values():
        j = 0
        for i in indices:
            shape = _state_shape(params[i])
            if shape is None:
                continue
            while j < len(cands) and (j in used or tuple(cands[j].shape) != shape):
                j += 1
            if j == len(cands):
                return {}  # this group does not line up: no guess
            used.add(j)
            placed[i] = cands[j]
            j += 1
    return placed


def _by_unique_shape(params: list[OptimizerParam], cands: list[TensorInfo]) -> dict[int, TensorInfo]:
    """Entries whose state shape occurs once among the entries and once among ``cands``: placed by shape alone."""
    shapes = [_state_shape(p) for p in params]
    by_shape: dict[tuple, list[TensorInfo]] = {}
    for info in cands:
        by_shape.setdefault(tuple(info.shape), []).append(info)
    return {i: by_shape[s][0] for i, s in enumerate(shapes)
            if s is not None and shapes.count(s) == 1 and len(by_shape.get(s, ())) == 1}


def _state_shape(param: OptimizerParam) -> tuple[int, ...] | None:
    return next((tuple(param.state_shapes[s]) for s in _SHAPED_STATES if s in param.state_shapes), None)


def gradient_rows(ckpt: Any, *, device: str = "cpu") -> tuple[list[dict[str, Any]], list[str]]:
    """One row per parameter with Adam or SGD-momentum state in ``ckpt`` (identity + :class:`GradientStats`), and
    notes on what could not be used; one state tensor pair (and its weight) in memory at a time."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for optimizer in ckpt.optimizers:
        names = held_tensors(ckpt, optimizer)
        unplaced = 0
        for i, param in enumerate(optimizer.params):
            hyper = optimizer.hyperparams[param.group_index] if param.group_index < len(optimizer.hyperparams) else {}
            stats = _param_stats(ckpt, optimizer, param, hyper, names.get(i), device)
            if stats is None:
                continue
            info = names.get(i)
            if info is None:
                unplaced += 1
            rows.append({
                "optimizer": optimizer.key_path, "param_id": str(param.param_id), "param_group": param.group_index,
                "group": info.group if info else "", "name": info.name if info else f"[{param.param_id}]",
                "module": info.module if info else "", **stats.as_row(),
            })
        if unplaced:
            notes.append(f"optimizer {optimizer.key_path or '<root>'!r}: {unplaced} entries could not be tied to a "
                         "model tensor (named by their index; no weight norm)")
    return rows, notes


def _param_stats(ckpt: Any, optimizer: OptimizerState, param: OptimizerParam, hyper: dict, info: TensorInfo | None,
                 device: str) -> GradientStats | None:
    refs = param.state_refs
    lr = _number(hyper.get("lr"))
    weight = ckpt.load(info) if info is not None else None
    if "exp_avg" in refs and "exp_avg_sq" in refs:
        step = _step(ckpt, optimizer, param)
        betas = hyper.get("betas")
        if not step or not isinstance(betas, (list, tuple)) or len(betas) != 2:
            return None  # before the first step, or not Adam's hyperparameters: nothing to correct with
        second = "max_exp_avg_sq" if hyper.get("amsgrad") and "max_exp_avg_sq" in refs else "exp_avg_sq"
        if tuple(refs["exp_avg"].shape) != tuple(refs[second].shape):
            return None  # not Adam's pair of moments of one parameter: nothing to read from it
        return adam_stats(ckpt.load_state(optimizer, param, "exp_avg"), ckpt.load_state(optimizer, param, second),
                          step, lr=lr, betas=(_number(betas[0]), _number(betas[1])),
                          eps=_number(hyper.get("eps", 1e-8)), weight=_same_shape(weight, refs["exp_avg"]),
                          device=device)
    if "momentum_buffer" in refs:
        return sgd_stats(ckpt.load_state(optimizer, param, "momentum_buffer"), lr=lr,
                         weight=_same_shape(weight, refs["momentum_buffer"]), device=device)
    return None


def _step(ckpt: Any, optimizer: OptimizerState, param: OptimizerParam) -> float:
    if "step" in param.state_scalars:
        return param.state_scalars["step"]
    if "step" in param.state_refs:
        return float(ckpt.load_state(optimizer, param, "step").reshape(-1)[0].item())
    return 0.0


def _same_shape(weight: torch.Tensor | None, ref: Any) -> torch.Tensor | None:
    return weight if weight is not None and tuple(weight.shape) == tuple(ref.shape) else None


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return _NAN


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and math.isfinite(den) else _NAN


def _f64(dev: torch.device) -> dict:
    return {"dtype": torch.float64, "device": dev}


def _floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values).tolist()]
