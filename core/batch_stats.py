"""Statistics of many small tensors at once: the per-tensor Python cost paid once per batch, not once per tensor.

A checkpoint of thousands of small tensors (norm weights, biases, LoRA factors, MoE routers) spends most of its time
in per-tensor overhead, not arithmetic. Here the tensors of a batch are converted per dtype, laid end to end as
float64 and reduced by one numba call (:mod:`ckptboard.core._batch_kernels`) that gives each tensor exactly what
:func:`ckptboard.core.stats.tensor_stats` gives it (same values bit for bit: counts, percentiles, histograms,
moments), and likewise :func:`ckptboard.core.updates.update_stats` (same sums in element order; the per-tensor
kernel's vectorised order differs by rounding only, < 1e-12 relative).

Only CPU, dense, non-quantized tensors of at most :data:`~ckptboard.core.stats.EXACT_PERCENTILE_NUMEL` elements
are batched (:func:`batchable`); callers take every other tensor through the per-tensor path.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from ckptboard.core.histogram import _CODE_HI, _CODE_LO, Histogram
from ckptboard.core.schema import PERCENTILE_COLUMNS, PERCENTILES
from ckptboard.core.stats import DEFAULT_RESOLUTION, EXACT_PERCENTILE_NUMEL, STAT_COLUMNS, TensorStats, as_float
from ckptboard.core.updates import UpdateStats, _ratio

__all__ = ["batchable", "SmallBatch", "small_stats", "small_updates", "BATCH_ELEMENTS"]

BATCH_ELEMENTS = 1 << 20  # elements per batch (8 MB of float64): bounded memory, thousands of tensors per call

_QS100 = np.asarray(PERCENTILES, dtype=np.float64) / 100.0  # as _small_stats computes ranks
_FLOAT_STATS = ("mean", "std", "min", "max", "abs_mean", "norm")
_INT_STATS = ("numel", "nfin", "zeros", "nans", "posinfs", "neginfs")
_NAN = float("nan")


def batchable(t: torch.Tensor) -> bool:
    """Small enough for the batched path (exact percentiles by sorting), and of a kind it handles."""
    return (t.numel() <= EXACT_PERCENTILE_NUMEL and t.device.type == "cpu" and t.layout == torch.strided
            and not t.is_quantized)


@functools.cache
def _kernels() -> ModuleType:
    from ckptboard.core import _batch_kernels

    return _batch_kernels


def _flat_float64(tensors: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The tensors' values as one float64 array (converted per dtype as the per-tensor path does) and offsets."""
    sizes = np.fromiter((t.numel() for t in tensors), dtype=np.int64, count=len(tensors))
    offsets = np.zeros(len(tensors) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    if len(by_dtype) == 1:  # one dtype (the usual case): the concatenation is already in order
        return _as_float64(tensors), offsets
    out = np.empty(int(offsets[-1]), dtype=np.float64)
    for indices in by_dtype.values():
        values = _as_float64([tensors[i] for i in indices])
        at = 0
        for i in indices:
            n = int(sizes[i])
            out[offsets[i]:offsets[i] + n] = values[at:at + n]
            at += n
    return out, offsets


def _as_float64(tensors: list[torch.Tensor]) -> np.ndarray:
    """Tensors of one dtype, flattened end to end, as float64 (via :func:`as_float`, bf16 through float32)."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors]) if tensors else torch.empty(0)
    x = as_float(flat)
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy().astype(np.float64, copy=False)


@dataclass
class SmallBatch:
    """The statistics of a batch of tensors: one row of ``floats``/``ints``/``pct`` per tensor, histogram bins of
    tensor ``i`` at ``[h_offsets[i], h_offsets[i + 1])`` of ``h_lo``/``h_hi``/``h_counts``."""

    floats: np.ndarray
    ints: np.ndarray
    pct: np.ndarray
    h_lo: np.ndarray
    h_hi: np.ndarray
    h_counts: np.ndarray
    h_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.ints)

    def rows(self) -> list[dict]:
        """Each tensor's statistic columns (``STAT_COLUMNS``), as :meth:`TensorStats.as_row` gives them."""
        floats, ints, pct = self.floats.tolist(), self.ints.tolist(), self.pct.tolist()
        rows = []
        for f, n, p in zip(floats, ints, pct):
            _, _, zeros, nans, pos, neg = n
            rows.append(dict(zip(STAT_COLUMNS, (*f, zeros, nans, pos, neg, pos + neg, *p))))
        return rows

    def histogram_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.h_offsets[i], self.h_offsets[i + 1]
        return self.h_lo[a:b], self.h_hi[a:b], self.h_counts[a:b]

    def tensor_stats(self, i: int) -> TensorStats:
        """Tensor ``i``'s statistics as the :class:`TensorStats` that ``tensor_stats`` returns."""
        f = dict(zip(_FLOAT_STATS, self.floats[i].tolist()))
        n = dict(zip(_INT_STATS, self.ints[i].tolist()))
        return TensorStats(
            numel=n["numel"], **f, zeros=n["zeros"], nans=n["nans"], posinfs=n["posinfs"], neginfs=n["neginfs"],
            percentiles=dict(zip(PERCENTILE_COLUMNS, self.pct[i].tolist())),
            histogram=Histogram(*self.histogram_arrays(i)), percentiles_exact=n["nfin"] > 0,
        )


def small_stats(tensors: list[torch.Tensor], resolution: int | None = DEFAULT_RESOLUTION) -> SmallBatch:
    """The statistics of every tensor (each :func:`batchable`), equal to ``tensor_stats(t, resolution=...)``'s."""
    x, offsets = _flat_float64(tensors)
    k = len(tensors)
    total = x.size
    batch = SmallBatch(
        floats=np.empty((k, len(_FLOAT_STATS))), ints=np.empty((k, len(_INT_STATS)), dtype=np.int64),
        pct=np.empty((k, _QS100.size)), h_lo=np.empty(total), h_hi=np.empty(total),
        h_counts=np.empty(total, dtype=np.int64), h_offsets=np.empty(k + 1, dtype=np.int64),
    )
    _kernels().small_batch(x, offsets, _QS100, _CODE_LO, _CODE_HI, int(resolution or 0), batch.floats, batch.ints,
                           batch.pct, batch.h_lo, batch.h_hi, batch.h_counts, batch.h_offsets)
    return batch


def small_updates(triples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> list[dict]:
    """``update_stats(prev, cur, first).as_row()`` of each ``(cur, prev, first)`` (same shapes, each batchable)."""
    if not triples:
        return []
    cur, offsets = _flat_float64([c for c, _, _ in triples])
    prev, _ = _flat_float64([p for _, p, _ in triples])
    has_first = np.fromiter((f is not None for _, _, f in triples), dtype=np.bool_, count=len(triples))
    first, _ = _flat_float64([c if f is None else f for c, _, f in triples])
    sums = np.empty((len(triples), 6))
    _kernels().update_batch(cur, prev, first, offsets, has_first, sums)
    rows = []
    for (dd, pp, cc, cp, df, ff), with_first in zip(sums.tolist(), has_first.tolist()):
        norm = math.sqrt(dd)
        rows.append(UpdateStats(
            update_norm=norm, update_ratio=_ratio(norm, math.sqrt(pp)), cosine=_ratio(cp, math.sqrt(cc) * math.sqrt(pp)),
            dist_from_first=math.sqrt(df) if with_first else _NAN,
            rel_dist_from_first=_ratio(math.sqrt(df), math.sqrt(ff)) if with_first else _NAN,
        ).as_row())
    return rows
