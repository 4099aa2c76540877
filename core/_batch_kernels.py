"""Numba loops behind the batched statistics of small tensors: one call for many tensors laid end to end.

Each kernel walks segments ``x[offsets[i]:offsets[i + 1]]`` (float64) and gives, per segment, exactly what the
per-tensor path gives (:func:`ckptboard.core.stats._small_stats`, :func:`ckptboard.core.updates.update_stats`):
the same sorted values, the same float64 arithmetic in the same order (NumPy's pairwise summation is reproduced by
:func:`_pairwise_sum`), so counts, percentiles, histograms and the moments are bit-identical. No fastmath here:
reassociation would change the sums.

Imported lazily, after :mod:`ckptboard.core._kernels` (which imports numba without its scipy probe).
"""

from __future__ import annotations

import numpy as np

from ckptboard.core import _kernels  # noqa: F401  (numba imported without scipy, see its docstring)
from numba import njit

__all__ = ["small_batch", "update_batch"]

_F32_MAX = float(np.finfo(np.float32).max)
_PW_BLOCK = 128  # NumPy's PW_BLOCKSIZE: below it, eight running sums; above, halves


@njit(cache=True, nogil=True)
def _block_sum(a, lo, n):
    """One leaf of NumPy's pairwise summation: ``n <= 128`` values, eight running sums from 8 values on."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    end = n - (n % 8)
    while i < end:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(cache=True, nogil=True)
def _pairwise_sum(a, n):
    """``np.sum(a[:n])`` bit for bit: NumPy's pairwise summation of float64 (numpy/_core/src/umath/
    loops_utils.h.src, ``pairwise_sum``: halves rounded down to a multiple of 8 until at most 128 values), started
    from the identity 0.0 as ``np.add.reduce`` does. Walked with explicit stacks: numba caches no recursion."""
    if n <= _PW_BLOCK:
        return 0.0 + _block_sum(a, 0, n)
    todo_lo = np.empty(64, dtype=np.int64)
    todo_n = np.empty(64, dtype=np.int64)
    todo_join = np.empty(64, dtype=np.bool_)
    sums = np.empty(64)
    top = 0
    done = 0
    todo_lo[0], todo_n[0], todo_join[0] = 0, n, False
    top = 1
    while top:
        top -= 1
        lo, m, join = todo_lo[top], todo_n[top], todo_join[top]
        if join:  # both halves are summed: left + right
            done -= 1
            sums[done - 1] = sums[done - 1] + sums[done]
        elif m <= _PW_BLOCK:
            sums[done] = _block_sum(a, lo, m)
            done += 1
        else:
            half = m // 2
            half -= half % 8
            todo_lo[top], todo_n[top], todo_join[top] = lo, m, True
            todo_lo[top + 1], todo_n[top + 1], todo_join[top + 1] = lo + half, m - half, False
            todo_lo[top + 2], todo_n[top + 2], todo_join[top + 2] = lo, half, False
            top += 3
    return 0.0 + sums[0]


@njit(cache=True, nogil=True)
def small_batch(x, offsets, qs100, code_lo, code_hi, resolution, floats, ints, pct, h_lo, h_hi, h_counts, h_offsets):
    """Statistics of every segment of ``x`` as :func:`ckptboard.core.stats._small_stats` computes them.

    Fills, per segment ``i``: ``floats[i]`` = mean, std, min, max, abs_mean, norm; ``ints[i]`` = numel, finite,
    zeros, nans, posinfs, neginfs; ``pct[i]`` = the percentiles at ``qs100 * 100``; its histogram bins (coarsened
    to ``resolution`` cells, 0: every bf16 bin) at ``h_*[h_offsets[i]:h_offsets[i + 1]]``.
    """
    n_seg = offsets.size - 1
    longest = 0
    for i in range(n_seg):
        longest = max(longest, offsets[i + 1] - offsets[i])
    v = np.empty(longest)
    d = np.empty(longest)
    f32 = np.empty(longest, dtype=np.float32)
    bits = f32.view(np.int32)
    nq = qs100.size
    h_at = 0
    h_offsets[0] = 0
    for i in range(n_seg):
        a, b = offsets[i], offsets[i + 1]
        m = 0
        nans = 0
        pos = 0
        neg = 0
        for j in range(a, b):
            xj = x[j]
            if np.isnan(xj):
                nans += 1
            elif xj == np.inf:
                pos += 1
            elif xj == -np.inf:
                neg += 1
            else:
                v[m] = xj
                m += 1
        vs = np.sort(v[:m])
        zeros = 0
        for j in range(m):
            zeros += vs[j] == 0.0
        ints[i, 0] = b - a
        ints[i, 1] = m
        ints[i, 2] = zeros
        ints[i, 3] = nans
        ints[i, 4] = pos
        ints[i, 5] = neg
        for k in range(6):
            floats[i, k] = np.nan
        for k in range(nq):
            pct[i, k] = np.nan
        if m == 0:
            h_offsets[i + 1] = h_at
            continue
        shift = vs[0]
        for j in range(m):
            d[j] = vs[j] - shift
        s1 = _pairwise_sum(d, m)
        for j in range(m):
            d[j] = d[j] * d[j]
        s2 = _pairwise_sum(d, m)
        for j in range(m):
            d[j] = abs(vs[j])
        sa = _pairwise_sum(d, m)
        mn, mx = vs[0], vs[m - 1]
        # _finish: the same expressions, Python's min/max spelled out (first argument wins ties)
        m1 = s1 / m
        constant = mn == mx
        if constant:
            mean = mn
            std = 0.0
        else:
            mean = shift + m1
            mean = mn if mn > mean else mean
            mean = mx if mx < mean else mean
            std = np.sqrt(max(s2 / m - m1 * m1, 0.0))
        floats[i, 0] = mean
        floats[i, 1] = std
        floats[i, 2] = mn
        floats[i, 3] = mx
        floats[i, 4] = sa / m
        floats[i, 5] = np.sqrt(max(s2 + shift * (2.0 * s1 + m * shift), 0.0))
        for k in range(nq):
            rank = qs100[k] * (m - 1)
            below = np.int64(np.floor(rank))
            above = min(below + 1, m - 1)
            p = vs[below] + (rank - below) * (vs[above] - vs[below])
            pct[i, k] = min(max(p, mn), mx)
        pct[i, 0] = mn
        pct[i, nq - 1] = mx
        # the histogram: runs of equal bf16 codes of the sorted values (-0.0 counted as 0.0)
        for j in range(m):
            f32[j] = np.float32(min(max(vs[j] + 0.0, -_F32_MAX), _F32_MAX))
        start = h_at
        prev = -1
        for j in range(m):
            code = (bits[j] >> np.int32(16)) & np.int32(0xFFFF)
            if code != prev:
                h_lo[h_at] = code_lo[code]
                h_hi[h_at] = code_hi[code]
                h_counts[h_at] = 0
                h_at += 1
                prev = code
            h_counts[h_at - 1] += 1
        # Histogram.coarsen((mx - mn) / resolution)
        nb = h_at - start
        width = (mx - mn) / resolution if resolution > 0 else np.nan
        if resolution > 0 and nb >= 2 and np.isfinite(width) and width > 0:
            first_lo = h_lo[start]
            out = start
            cell = np.floor((h_lo[start] - first_lo) / width)
            for j in range(start + 1, h_at):
                c = np.floor((h_lo[j] - first_lo) / width)
                if c != cell:
                    out += 1
                    h_lo[out] = h_lo[j]
                    h_hi[out] = h_hi[j]
                    h_counts[out] = h_counts[j]
                    cell = c
                else:
                    h_hi[out] = h_hi[j]
                    h_counts[out] += h_counts[j]
            h_at = out + 1
        h_offsets[i + 1] = h_at


@njit(cache=True, nogil=True)
def update_batch(cur, prev, first, offsets, has_first, sums):
    """Per segment ``i``: ``sums[i]`` = the six sums of :func:`ckptboard.core._kernels.update_sums` (float64 in,
    summed in element order; ``has_first[i]`` False leaves the last two 0)."""
    for i in range(offsets.size - 1):
        dd = 0.0
        pp = 0.0
        cc = 0.0
        cp = 0.0
        df = 0.0
        ff = 0.0
        for j in range(offsets[i], offsets[i + 1]):
            c = cur[j]
            p = prev[j]
            e = 0.0 if (c == p or (c != c and p != p)) else c - p
            dd += e * e
            pp += p * p
            cc += c * c
            cp += c * p
            if has_first[i]:
                f = first[j]
                g = 0.0 if (c == f or (c != c and f != f)) else c - f
                df += g * g
                ff += f * f
        sums[i, 0] = dd
        sums[i, 1] = pp
        sums[i, 2] = cc
        sums[i, 3] = cp
        sums[i, 4] = df
        sums[i, 5] = ff
