"""How a tensor moved between checkpoints, and norm layers' per-channel running statistics.

``update_stats(prev, cur, first)`` for one tensor present with the same shape in consecutive checkpoints:

- ``update_norm`` = ‖cur − prev‖ (L2); exactly 0.0 when the two are identical, NaN/Inf included, because the
  difference of two equal values (or of two NaNs) is taken as 0; otherwise NaN and Inf propagate.
- ``update_ratio`` = ‖cur − prev‖ / ‖prev‖; ``cosine`` = ⟨cur, prev⟩ / (‖cur‖ ‖prev‖);
  ``dist_from_first`` = ‖cur − first‖; ``rel_dist_from_first`` = ‖cur − first‖ / ‖first‖.
- A ratio whose denominator is 0 is NaN (a zero-initialised bias has no relative update), and so are the
  ``first`` statistics when ``first`` is None. Sums run chunk by chunk in float64 (complex: magnitudes,
  other dtypes as in :mod:`ckptboard.core.stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ckptboard.core.schema import RunningStat
from ckptboard.core.stats import _cpu_kernels, _numpy, as_float, iter_chunks, resolve_device

__all__ = ["UpdateStats", "update_stats", "update_sums", "update_from_sums", "norm_running_stats"]

_NAN = float("nan")


@dataclass
class UpdateStats:
    """The five update columns of ``UPDATE_COLUMNS`` for one tensor between two checkpoints."""

    update_norm: float
    update_ratio: float
    cosine: float
    dist_from_first: float
    rel_dist_from_first: float

    def as_row(self) -> dict:
        return {"update_norm": self.update_norm, "update_ratio": self.update_ratio, "cosine": self.cosine,
                "dist_from_first": self.dist_from_first, "rel_dist_from_first": self.rel_dist_from_first}


def update_stats(
    prev: torch.Tensor, cur: torch.Tensor, first: torch.Tensor | None, *, device: str | torch.device = "cpu"
) -> UpdateStats:
    """Update statistics of ``cur`` against ``prev`` (and ``first``), streamed in chunks on ``device``."""
    return update_from_sums(update_sums(prev, cur, first, device=device), first is not None)


def update_sums(
    prev: torch.Tensor, cur: torch.Tensor, first: torch.Tensor | None, *, device: str | torch.device = "cpu"
) -> np.ndarray:
    """The six float64 sums behind :class:`UpdateStats` (``(c-p)^2, p^2, c^2, c*p, (c-f)^2, f^2``, the last two 0
    without ``first``): plain sums over elements, so those of a tensor's parts (DCP chunks) add up to its own."""
    tensors = [t.detach() for t in (cur, prev) + ((first,) if first is not None else ())]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"update_stats needs tensors of one shape, got {sorted(shapes)}")
    tensors = [t.dequantize() if t.is_quantized else t for t in tensors]
    dev = resolve_device(device)
    kernels = _cpu_kernels() if dev.type == "cpu" else None
    sums = np.zeros(6)  # (c-p)^2, p^2, c^2, c*p, (c-f)^2, f^2
    on_device = torch.zeros(6, dtype=torch.float64, device=dev)  # the torch path: one synchronisation at the end
    for chunk in iter_chunks(*tensors, device=dev):
        floats = _common_float(chunk)
        if kernels is not None:
            arrays = [_numpy(x) for x in floats]
            sums += kernels.update_sums(arrays[0], arrays[1], arrays[-1], len(arrays) == 3)
        else:
            on_device += _torch_sums(floats)
    return sums + on_device.cpu().numpy()


def update_from_sums(sums: np.ndarray, has_first: bool) -> UpdateStats:
    """The update statistics of the six sums of :func:`update_sums` (merged over parts, or of one tensor)."""
    dd, pp, cc, cp, df, ff = (float(s) for s in sums)
    return UpdateStats(
        update_norm=math.sqrt(dd),
        update_ratio=_ratio(math.sqrt(dd), math.sqrt(pp)),
        cosine=_ratio(cp, math.sqrt(cc) * math.sqrt(pp)),
        dist_from_first=math.sqrt(df) if has_first else _NAN,
        rel_dist_from_first=_ratio(math.sqrt(df), math.sqrt(ff)) if has_first else _NAN,
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 and math.isfinite(den) else _NAN


def _common_float(chunk: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The pieces as one float dtype: float32 when every piece is float32 after upcasting, else float64."""
    floats = [as_float(x) for x in chunk]
    floats = [x.float() if x.dtype == torch.bfloat16 else x for x in floats]
    if any(x.dtype != torch.float32 for x in floats):
        floats = [x.double() for x in floats]
    return floats


def _torch_sums(floats: list[torch.Tensor]) -> torch.Tensor:
    """The six sums of ``update_sums`` in torch ops, on the pieces' device."""
    cur, prev = floats[0].double(), floats[1].double()

    def diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        return torch.where(same, 0.0, a - b)

    d = diff(cur, prev)
    out = [(d * d).sum(), (prev * prev).sum(), (cur * cur).sum(), (cur * prev).sum()]
    if len(floats) == 3:
        first = floats[2].double()
        e = diff(cur, first)
        out += [(e * e).sum(), (first * first).sum()]
    else:
        out += [torch.zeros((), dtype=torch.float64, device=cur.device)] * 2
    return torch.stack(out)


def norm_running_stats(module: str, running_mean: torch.Tensor, running_var: torch.Tensor) -> list[dict]:
    """One row per channel of a norm layer's buffers: the ``BATCHNORM_COLUMNS`` module, channel, running_mean and
    running_var (run, checkpoint, step and group are the caller's to add)."""
    mean = running_mean.detach().reshape(-1).double().cpu().numpy()
    var = running_var.detach().reshape(-1).double().cpu().numpy()
    if mean.shape != var.shape:
        raise ValueError(
            f"{module}: running_mean has {mean.size} channels but running_var has {var.size}; "
            "they must come from the same norm layer"
        )
    return [
        {"module": module, "channel": i, RunningStat.RUNNING_MEAN.value: float(m),
         RunningStat.RUNNING_VAR.value: float(v)}
        for i, (m, v) in enumerate(zip(mean, var))
    ]
