"""Numba loops behind the CPU paths of :mod:`ckptboard.core.diff` and :mod:`ckptboard.core.gradients`: one pass per
chunk pair, float64 sums, the bf16-code histogram of a derived quantity counted block by block from a float32
scratch buffer (the same binning as :mod:`ckptboard.core.histogram`). Compiled once into numba's cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["BLOCK", "diff_chunk", "adam_chunk"]

BLOCK = 16384  # values per block: the counting loop re-reads the block's scratch from L1/L2
_F32_MAX = 3.4028234663852886e38
_FASTMATH = {"reassoc", "nsz", "contract", "arcp"}  # no 'nnan'/'ninf': NaN and Inf must be seen


@njit(cache=True, nogil=True)
def _count(scratch, m, counts):
    bits = scratch[:m].view(np.int32)
    for j in range(m):
        counts[(bits[j] >> np.int32(16)) & np.int32(0xFFFF)] += 1


@njit(cache=True, nogil=True)
def _f32(x):
    return np.float32(min(max(x, -_F32_MAX), _F32_MAX))


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def diff_chunk(a, b, scratch, counts):
    """Sums of a², b², ab, d², d and max |d| over finite d (d = b − a, 0 where a == b or both NaN), sign flips,
    finite d count; the codes of the finite d added to ``counts``."""
    aa = bb = ab = dd = ds = top = 0.0
    flips = 0
    nfin = 0
    n = a.size
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        m = 0
        for i in range(start, stop):
            x = np.float64(a[i])
            y = np.float64(b[i])
            d = 0.0 if (x == y or (x != x and y != y)) else y - x
            aa += x * x
            bb += y * y
            ab += x * y
            dd += d * d
            flips += np.int64(x * y < 0.0)
            if abs(d) < np.inf:
                ds += d
                top = max(top, abs(d))
                nfin += 1
                scratch[m] = _f32(d)
                m += 1
        _count(scratch, m, counts)
    return aa, bb, ab, dd, ds, top, flips, nfin


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def adam_chunk(m1, m2, w, has_w, c1, c2, lr, eps, scratch, counts):
    """Sums of v̂, m̂², u², w² and max √v̂ (u = lr m̂ / (√v̂ + eps)); the codes of the finite √v̂ added to ``counts``."""
    vs = ms = us = ws = top = 0.0
    n = m1.size
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        k = 0
        for i in range(start, stop):
            mh = np.float64(m1[i]) / c1
            vh = np.float64(m2[i]) / c2
            r = np.sqrt(max(vh, 0.0))
            u = lr * mh / (r + eps)
            vs += vh
            ms += mh * mh
            us += u * u
            if has_w:
                x = np.float64(w[i])
                ws += x * x
            top = max(top, r)
            if r < np.inf:
                scratch[k] = _f32(r)
                k += 1
        _count(scratch, k, counts)
    return vs, ms, us, ws, top
