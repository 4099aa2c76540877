"""Numba loops behind the CPU statistics: one pass per chunk, float64 accumulation, compiled once and cached.

Imported lazily by :mod:`ckptboard.core.stats` and :mod:`ckptboard.core.updates`: a fresh process pays for numba on
its first tensor (its import; target initialisation; loading the cached machine code), ~2 s more when the cache is
cold. Two imports of scipy that these kernels never use are skipped (:func:`_without_scipy`): numba's version check
(``import scipy``) and its BLAS probe (``numba.np.arraymath`` imports ``scipy.linalg.cython_blas``, ~0.4 s), which
only decides whether numba's ``np.correlate``/``np.convolve`` call BLAS or a loop; ``np.dot`` and the rest of
numba's linear algebra import scipy when they are compiled, as before. See benchmarks/bench_startup.py.

``bits`` arguments are the int32 view of fp32 values: the top 16 bits of an fp32 value are its bf16 code
(truncated), the histogram's bin index. Keys are the bits remapped so that integer order is float order (the
sign-magnitude trick), which lets LLVM vectorise min/max as integer reductions.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ckptboard.core.gcfreeze import freeze_in_worker


# Imports numba's start-up makes that these kernels never use: scipy (numba's version check and its BLAS probe) and
# cffi with its C parser (numba's typing of cffi functions, ~0.07 s). Blocked only while the kernels load.
_SKIPPED = ("scipy", "cffi", "pycparser")


class _NoScipy:
    """A meta-path finder that makes ``import scipy…`` (and cffi, pycparser) fail (only while installed, only for
    modules not loaded)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in _SKIPPED:
            raise ImportError(f"{name}: skipped while ckptboard loads its numba kernels")
        return None


@contextmanager
def _without_scipy() -> Iterator[None]:
    finder = _NoScipy()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


if "numba.np.arraymath" in sys.modules:
    from numba import njit
else:
    freeze_in_worker()  # numba's import sets off full collections, which would walk torch's objects each time
    with _without_scipy():
        from numba import njit
        from numba.core.registry import cpu_target
        from numba.np import arraymath  # noqa: F401  (its BLAS probe runs here, without scipy: a loop fallback)

        # The target's registries load on the first call anyway; loaded here, numba's cffi typing finds no cffi
        # (a process that calls cffi functions from numba imports numba itself first, and keeps it).
        cpu_target.typing_context.refresh()
        cpu_target.target_context.refresh()
    freeze_in_worker()


__all__ = [
    "KEY_NEG_INF",
    "KEY_POS_INF",
    "fast_f32",
    "count_codes32",
    "count_codes16",
    "exact_chunk",
    "update_sums",
]

# Reassociation lets LLVM vectorise the float64 sums; no 'nnan'/'ninf': NaN and Inf must survive to be detected.
_FASTMATH = {"reassoc", "nsz", "contract", "arcp"}

# Order keys of the fp32 bit patterns of -inf and +inf: a chunk whose key range reaches them holds a non-finite value.
KEY_POS_INF = 0x7F800000
KEY_NEG_INF = -0x7F800001  # 0xFF800000 ^ 0x7FFFFFFF as int32


_BLOCK = 16384  # fp32 values per block: the counting pass re-reads the block from L1/L2


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _moments_block(vals, bits, shift):
    """Branch-free: shifted sums, |x| sum, min/max order keys, zeros, OR of the low 16 bits."""
    s1 = 0.0
    s2 = 0.0
    sa = 0.0
    kmin = np.int32(0x7FFFFFFF)
    kmax = np.int32(-0x80000000)
    zeros = 0
    low = np.int32(0)
    for i in range(vals.size):
        x = np.float64(vals[i])
        d = x - shift
        s1 += d
        s2 += d * d
        sa += abs(x)
        b = bits[i]
        k = b ^ ((b >> np.int32(31)) & np.int32(0x7FFFFFFF))
        kmin = min(kmin, k)
        kmax = max(kmax, k)
        zeros += np.int64((b << np.int32(1)) == 0)
        low |= b
    return s1, s2, sa, kmin, kmax, zeros, low


@njit(cache=True, nogil=True)
def count_codes32(bits, counts):
    """Add one to ``counts[code]`` per value, code = top 16 bits of the fp32 pattern."""
    for i in range(bits.size):
        counts[(bits[i] >> np.int32(16)) & np.int32(0xFFFF)] += 1


@njit(cache=True, nogil=True)
def fast_f32(vals, bits, shift, counts, sums, ints):
    """Moments then codes, block by block, over an fp32 chunk until a block holds NaN/Inf.

    Adds shifted sums and the |x| sum to ``sums`` (float64[3]); keeps min/max order keys, zeros and the OR of the
    low 16 bits in ``ints`` (int64[4]). Returns ``done``: the values before it are counted; the rest is the exact
    kernel's to do.
    """
    n = vals.size
    for start in range(0, n, _BLOCK):
        end = min(n, start + _BLOCK)
        s1, s2, sa, kmin, kmax, zeros, low = _moments_block(vals[start:end], bits[start:end], shift)
        if kmin <= KEY_NEG_INF or kmax >= KEY_POS_INF:
            return start
        count_codes32(bits[start:end], counts)
        sums[0] += s1
        sums[1] += s2
        sums[2] += sa
        ints[0] = min(ints[0], kmin)
        ints[1] = max(ints[1], kmax)
        ints[2] += zeros
        ints[3] |= low & np.int32(0xFFFF)
    return n


@njit(cache=True, nogil=True)
def count_codes16(codes, counts):
    """Add one to ``counts[code]`` per uint16 code (bf16 data: the code is the value)."""
    for i in range(codes.size):
        counts[codes[i]] += 1


@njit(cache=True, nogil=True)
def exact_chunk(vals, bits, shift, counts):
    """Branching pass for chunks holding NaN/Inf (any float dtype): moments over finite values only.

    ``bits`` are the int32 fp32 patterns the histogram counts (``vals`` itself when fp32, its clamped fp32 cast
    otherwise). Returns finite count, shifted sums, |x| sum, min, max, zeros, nans, +infs, -infs, low-bit OR.
    """
    nfin = 0
    s1 = 0.0
    s2 = 0.0
    sa = 0.0
    mn = np.inf
    mx = -np.inf
    zeros = 0
    nans = 0
    pos = 0
    neg = 0
    low = np.int32(0)
    for i in range(vals.size):
        x = np.float64(vals[i])
        if np.isnan(x):
            nans += 1
        elif x == np.inf:
            pos += 1
        elif x == -np.inf:
            neg += 1
        else:
            nfin += 1
            d = x - shift
            s1 += d
            s2 += d * d
            sa += abs(x)
            mn = min(mn, x)
            mx = max(mx, x)
            zeros += x == 0.0
            b = bits[i]
            low |= b
            counts[(b >> np.int32(16)) & np.int32(0xFFFF)] += 1
    return nfin, s1, s2, sa, mn, mx, zeros, nans, pos, neg, low & np.int32(0xFFFF)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _pair_sums(cur, other):
    """Sums of ``(c-o)^2, o^2, c^2, c*o``; a difference of equal (or both NaN) values counts as 0."""
    dd = 0.0
    oo = 0.0
    cc = 0.0
    co = 0.0
    for i in range(cur.size):
        c = np.float64(cur[i])
        o = np.float64(other[i])
        d = 0.0 if (c == o or (c != c and o != o)) else c - o
        dd += d * d
        oo += o * o
        cc += c * c
        co += c * o
    return dd, oo, cc, co


@njit(cache=True, nogil=True)
def update_sums(cur, prev, first, has_first):
    """Sums of ``(c-p)^2, p^2, c^2, c*p, (c-f)^2, f^2`` (the last two 0 without ``first``)."""
    dd, pp, cc, cp = _pair_sums(cur, prev)
    df, ff = 0.0, 0.0
    if has_first:
        df, ff, _, _ = _pair_sums(cur, first)
    return dd, pp, cc, cp, df, ff
