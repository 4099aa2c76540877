"""Range-free histograms on the bf16 grid, and re-binning them onto common edges.

Format: a :class:`Histogram` is three equal-length arrays ``lo``, ``hi`` (float64) and ``counts`` (int64): sorted,
non-overlapping bins, bin ``i`` holding ``counts[i]`` finite values ``v`` with ``lo[i] <= v <= hi[i]`` (touching
bins share an edge; a value on it belongs to the bin nearer zero). Empty bins are left out.

Bins come from the bf16 code of each value, i.e. the top 16 bits of its fp32 pattern (truncation toward zero):
65,536 codes, 65,280 of them finite, 128 log-spaced bins per power of two and sign. For a value in
``[2**e, 2**(e+1))`` its bin is ``[m * 2**(e-7), (m+1) * 2**(e-7))`` with ``128 <= m < 256``: one bf16 ulp wide,
``2**-8`` to ``2**-7`` of the value. Subnormal bins are ``2**-133`` wide. No range pass is needed, and counts merge
across chunks, tensors and checkpoints by adding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Histogram", "rebin", "code_values", "N_CODES"]

N_CODES = 1 << 16


def _magnitude_edges() -> np.ndarray:
    """``edge[m]``: the value of non-negative bf16 code ``m`` for ``m <= 0x7F80`` (``2**128`` stands for +Inf)."""
    m = np.arange(0x7F81, dtype=np.int64)
    exponent, mantissa = m >> 7, m & 0x7F
    return np.where(exponent == 0, np.ldexp(mantissa, -133), np.ldexp(128 + mantissa, exponent - 134))


def _code_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes = np.arange(N_CODES, dtype=np.int64)
    negative, magnitude = codes >> 15 == 1, codes & 0x7FFF
    finite = magnitude < 0x7F80
    edges = _magnitude_edges()
    m = np.minimum(magnitude, 0x7F7F)
    lo = np.where(negative, -edges[m + 1], edges[m])
    hi = np.where(negative, -edges[m], edges[m + 1])
    return lo, hi, finite


_CODE_LO, _CODE_HI, _CODE_FINITE = _code_tables()


@dataclass
class Histogram:
    """Sorted, non-overlapping bins of finite values (see the module docstring)."""

    lo: np.ndarray
    hi: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        self.lo = np.asarray(self.lo, dtype=np.float64)
        self.hi = np.asarray(self.hi, dtype=np.float64)
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if not (self.lo.shape == self.hi.shape == self.counts.shape) or self.lo.ndim != 1:
            raise ValueError(
                f"histogram arrays must be 1-D and of equal length, got lo{self.lo.shape}, "
                f"hi{self.hi.shape}, counts{self.counts.shape}"
            )

    @classmethod
    def empty(cls) -> "Histogram":
        return cls(np.empty(0), np.empty(0), np.empty(0, dtype=np.int64))

    @classmethod
    def from_code_counts(cls, counts: np.ndarray) -> "Histogram":
        """From 65,536 counts indexed by bf16 code; counts of non-finite codes are dropped."""
        counts = np.asarray(counts)
        used = np.flatnonzero((counts != 0) & _CODE_FINITE)  # on a bool array: 5x faster than on int64
        split = np.searchsorted(used, 0x8000)  # value order: negative codes by falling magnitude, then positive
        codes = np.concatenate((used[split:][::-1], used[:split]))
        return cls(_CODE_LO[codes], _CODE_HI[codes], counts[codes])

    @classmethod
    def from_codes(cls, codes: np.ndarray) -> "Histogram":
        """From one bf16 code per value (any order); non-finite codes are dropped."""
        return cls.from_code_counts(np.bincount(np.asarray(codes, dtype=np.int64), minlength=N_CODES))

    @classmethod
    def from_sorted_codes(cls, codes: np.ndarray) -> "Histogram":
        """From the bf16 codes of finite values sorted ascending (no -0.0 among them): runs become bins."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size == 0:
            return cls.empty()
        starts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
        starts = np.concatenate(([0], starts))
        counts = np.diff(np.concatenate((starts, [codes.size])))
        first = codes[starts]
        return cls(_CODE_LO[first], _CODE_HI[first], counts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def coarsen(self, width: float) -> "Histogram":
        """Merge neighbouring bins whose ``lo`` fall in the same ``width``-wide cell counted from the first ``lo``."""
        if self.counts.size < 2 or not np.isfinite(width) or width <= 0:
            return self
        cell = np.floor((self.lo - self.lo[0]) / width)
        starts = np.concatenate(([0], np.flatnonzero(cell[1:] != cell[:-1]) + 1))
        ends = np.concatenate((starts[1:], [cell.size])) - 1
        return Histogram(self.lo[starts], self.hi[ends], np.add.reduceat(self.counts, starts))

    def merge(self, other: "Histogram") -> "Histogram":
        """Add two histograms whose bins are either identical or disjoint (e.g. two bf16-grid histograms)."""
        if self.counts.size == 0 or other.counts.size == 0:
            return other if self.counts.size == 0 else self
        lo = np.concatenate([self.lo, other.lo])
        hi = np.concatenate([self.hi, other.hi])
        order = np.lexsort((hi, lo))
        lo, hi, counts = lo[order], hi[order], np.concatenate([self.counts, other.counts])[order]
        starts = np.concatenate(([0], np.flatnonzero((lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])) + 1))
        merged = Histogram(lo[starts], hi[starts], np.add.reduceat(counts, starts))
        if np.any(merged.lo[1:] < merged.hi[:-1]):
            raise ValueError("cannot merge histograms whose bins overlap with different edges: rebin both first")
        return merged

    def percentiles(self, qs: np.ndarray, *, at_edges: bool = False) -> np.ndarray:
        """Percentiles ``qs`` (0-100, linear interpolation between order statistics) estimated from the bins.

        Each order statistic is placed uniformly inside its bin, so it is off by less than the bin's width (one bf16
        ulp of the value). ``at_edges``: every value equals its bin's edge nearest zero (bf16-representable data),
        which makes the result exact.
        """
        qs = np.asarray(qs, dtype=np.float64)
        n = self.total
        if n == 0:
            return np.full(qs.shape, np.nan)
        rank = qs / 100.0 * (n - 1)
        below = np.floor(rank)
        frac = rank - below
        cum = np.cumsum(self.counts)
        lower = self._order_statistics(cum, below.astype(np.int64), at_edges)
        upper = self._order_statistics(cum, np.minimum(below + 1, n - 1).astype(np.int64), at_edges)
        return lower + frac * (upper - lower)

    def _order_statistics(self, cum: np.ndarray, k: np.ndarray, at_edges: bool) -> np.ndarray:
        b = np.searchsorted(cum, k, side="right")
        if at_edges:
            return np.where(self.lo[b] >= 0, self.lo[b], self.hi[b])
        position = (k - (cum[b] - self.counts[b]) + 0.5) / self.counts[b]
        return self.lo[b] + position * (self.hi[b] - self.lo[b])


def code_values(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The value (float64) and count of every finite bf16 code with a non-zero count, from 65,536 counts."""
    counts = np.asarray(counts)
    used = np.flatnonzero((counts != 0) & _CODE_FINITE)
    return np.where(_CODE_LO[used] >= 0, _CODE_LO[used], _CODE_HI[used]), counts[used]


def rebin(lo: np.ndarray, hi: np.ndarray, counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts (float64) on new increasing ``edges``, each old bin spread uniformly over ``[lo, hi]``.

    Mass outside ``[edges[0], edges[-1]]`` is dropped; the result has ``len(edges) - 1`` entries.
    """
    hist = Histogram(lo, hi, counts)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"rebin edges must be a 1-D increasing array of at least 2 values, got {edges!r}")
    if hist.counts.size == 0:
        return np.zeros(edges.size - 1)
    if np.any(hist.hi <= hist.lo) or np.any(hist.lo[1:] < hist.hi[:-1]):
        raise ValueError("rebin needs sorted, non-overlapping bins with hi > lo")
    # The cumulative count is piecewise linear: flat between bins, rising across each bin.
    cum = np.cumsum(hist.counts, dtype=np.float64)
    xs = np.column_stack([hist.lo, hist.hi]).ravel()
    ys = np.column_stack([cum - hist.counts, cum]).ravel()
    return np.diff(np.interp(edges, xs, ys, left=0.0, right=cum[-1]))
