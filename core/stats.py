"""Per-tensor statistics in one streaming pass: exact moments and counts, a bf16-grid histogram, percentiles.

Definitions (``n`` = finite values; moments and extremes cover finite values only, accumulated in float64):

- ``numel``: every element; ``zeros``, ``nans``, ``posinfs``, ``neginfs``: counts (``infs`` = their sum).
- ``mean``, ``abs_mean``: over the ``n`` finite values; ``std``: population standard deviation (``ddof=0``), exactly
  0.0 when ``min == max``; ``norm``: L2 norm ``sqrt(sum x**2)``; ``min``/``max``: exact.
- Percentiles at :data:`ckptboard.core.schema.PERCENTILES`, linear interpolation between order statistics (NumPy's
  default method). Exact (sorted values) when the tensor has at most :data:`EXACT_PERCENTILE_NUMEL` elements or
  every finite value is bf16-representable (bf16, fp8, int8/uint8/bool and such fp32 data); otherwise estimated
  from the histogram's cumulative counts, each order statistic ``v`` placed uniformly inside its bin, so
  ``|error| < max(ulp_bf16(v_k), ulp_bf16(v_k+1))`` for the two order statistics interpolated, where
  ``ulp_bf16(v) = 2**(floor(log2|v|) - 7) <= 2**-7 * |v|`` (``2**-133`` below the smallest normal fp32). ``p0`` and
  ``p100`` are the exact ``min`` and ``max``, and every percentile is clamped into ``[min, max]``.
- ``histogram``: the finite values on the bf16 grid (:mod:`ckptboard.core.histogram`), neighbouring bins merged
  into cells ``(max - min) / resolution`` wide (``resolution=None`` keeps every bf16 bin).

Edge cases:

- empty tensor: ``numel = 0``, all counts 0, every float statistic NaN, empty histogram.
- no finite value (all NaN, all ±Inf): counts as usual; mean, std, min, max, abs_mean, norm and percentiles NaN.
- 0-d tensor (``num_batches_tracked``): one element; its value is mean, min, max and every percentile; std 0.0.
- one element: as 0-d. Constant tensor: std exactly 0.0, mean and every percentile equal the value.
- ±Inf and NaN mixed with finite values: counted, left out of moments, extremes, percentiles and histogram.
- integer dtypes: converted to float64 per chunk (exact below 2**53); bool: False = 0, True = 1.
- fp16 and fp8: upcast to fp32 per chunk; bf16: its codes are counted directly and the moments follow exactly
  from the counts; fp64: moments in float64, histogram of the values rounded to fp32 (clamped to its range).
- complex: statistics of the magnitude ``|z|`` (``torch.abs``). Quantized: dequantised first (whole tensor).

Streaming: tensors are read as chunks of :data:`CHUNK_BYTES` (views where no conversion is needed; the numba
kernel walks each in 16K-value blocks, counting a block while it is still in cache); on ``device="cuda[:N]"``
chunks go through two pinned staging buffers to the GPU, the copy of one chunk overlapping the reduction of the
previous one, with one synchronisation per tensor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import torch

from ckptboard.core.devices import resolve_device
from ckptboard.core.histogram import N_CODES, Histogram, code_values
from ckptboard.core.schema import PERCENTILE_COLUMNS, PERCENTILES, TENSOR_COLUMNS

__all__ = [
    "TensorStats",
    "tensor_stats",
    "iter_chunks",
    "resolve_device",
    "as_float",
    "CHUNK_BYTES",
    "GPU_CHUNK_BYTES",
    "EXACT_PERCENTILE_NUMEL",
    "DEFAULT_RESOLUTION",
    "STAT_COLUMNS",
    "add_finite_codes",
    "accumulate",
    "finish",
]

CHUNK_BYTES = 16 << 20
GPU_CHUNK_BYTES = 16 << 20
EXACT_PERCENTILE_NUMEL = 4096
DEFAULT_RESOLUTION = 512
STAT_COLUMNS: tuple[str, ...] = TENSOR_COLUMNS[TENSOR_COLUMNS.index("mean"):]

_QS = np.asarray(PERCENTILES, dtype=np.float64)
_F32_MAX = float(np.finfo(np.float32).max)
_NAN = float("nan")
# Upcasts for the float kernels: exact for every value of the source dtype.
_TO_FLOAT32 = {torch.float16, torch.bool, torch.uint8, torch.int8, torch.int16} | {
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
}


@dataclass
class TensorStats:
    """Statistics of one tensor, as defined in the module docstring."""

    numel: int
    mean: float
    std: float
    min: float
    max: float
    abs_mean: float
    norm: float
    zeros: int
    nans: int
    posinfs: int
    neginfs: int
    percentiles: dict[str, float]
    histogram: Histogram
    percentiles_exact: bool = False

    @property
    def infs(self) -> int:
        return self.posinfs + self.neginfs

    def as_row(self) -> dict:
        """The statistic columns of ``TENSOR_COLUMNS`` (``mean`` .. ``infs`` and the percentiles)."""
        values = {**{name: getattr(self, name) for name in STAT_COLUMNS if name not in self.percentiles},
                  **self.percentiles}
        return {name: values[name] for name in STAT_COLUMNS}


@dataclass
class _Acc:
    """Running sums of one tensor; moments are of ``x - shift`` so that a constant tensor gives std 0 exactly."""

    numel: int
    shift: float = 0.0
    nfin: int = 0
    s1: float = 0.0
    s2: float = 0.0
    sa: float = 0.0
    mn: float = math.inf
    mx: float = -math.inf
    zeros: int = 0
    nans: int = 0
    posinfs: int = 0
    neginfs: int = 0
    low_bits: bool = False  # some finite value is not bf16-representable
    counts: np.ndarray = field(default_factory=lambda: np.zeros(N_CODES, dtype=np.int64))
    codes_only: bool = False  # bf16 data: every statistic follows from ``counts`` (see _moments_from_codes)

    def merged(self, other: _Acc) -> _Acc:
        """The sums of both parts of one tensor, exactly (Chan et al.'s parallel update in shifted sums).

        Both parts' sums are moved to this part's shift ``c`` (``s1 + n*d``, ``s2 + 2*d*s1 + n*d**2`` with
        ``d = shift - c``; for equal shifts this is adding them); counts, code counts and extremes add up or
        combine. bf16 parts recompute every moment from the merged code counts, as one pass over the whole would.
        With this part the one holding the tensor's first element, ``c`` is the shift a single pass would use.
        """
        if self.codes_only != other.codes_only:
            raise ValueError("cannot merge the sums of a bf16 part with those of another dtype")
        out = _Acc(numel=self.numel + other.numel, shift=self.shift, codes_only=self.codes_only,
                   counts=self.counts + other.counts)
        if out.codes_only:
            _moments_from_codes(out)
            return out
        for part in (self, other):
            d = part.shift - out.shift
            out.s1 += part.s1 + part.nfin * d
            out.s2 += part.s2 + 2.0 * d * part.s1 + part.nfin * d * d
            out.sa += part.sa
            out.nfin += part.nfin
            out.zeros += part.zeros
            out.nans += part.nans
            out.posinfs += part.posinfs
            out.neginfs += part.neginfs
        out.mn, out.mx = min(self.mn, other.mn), max(self.mx, other.mx)
        out.low_bits = self.low_bits or other.low_bits
        return out


def as_float(chunk: torch.Tensor) -> torch.Tensor:
    """The chunk as float32, float64 or bfloat16 (kept for its codes), exactly where the dtype allows."""
    if chunk.dtype in (torch.float32, torch.float64, torch.bfloat16):
        return chunk
    if chunk.is_complex():
        return chunk.abs()
    if chunk.dtype in _TO_FLOAT32:
        return chunk.float()
    return chunk.double()


def iter_chunks(
    *tensors: torch.Tensor, device: str | torch.device = "cpu", chunk_bytes: int | None = None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Contiguous 1-D pieces of same-shape tensors, the same elements of each, on ``device``.

    CPU pieces of contiguous tensors are views; a CUDA device gets them through pinned, double-buffered staging.
    """
    dev = torch.device(device)
    shape = tensors[0].shape
    if any(t.shape != shape for t in tensors):
        raise ValueError(f"iter_chunks needs tensors of one shape, got {[tuple(t.shape) for t in tensors]}")
    if chunk_bytes is None:
        chunk_bytes = GPU_CHUNK_BYTES if dev.type == "cuda" else CHUNK_BYTES
    per_chunk = max(1, chunk_bytes // max(t.element_size() for t in tensors))
    blocks = _blocks(tuple(shape), per_chunk)
    if dev.type == "cuda" and any(t.device.type == "cpu" for t in tensors):
        yield from _staged(tensors, list(blocks), dev, per_chunk)
        return
    for index in blocks:
        yield tuple(t[index].reshape(-1).to(dev) for t in tensors)


def _blocks(shape: tuple[int, ...], per_chunk: int) -> Iterator[tuple]:
    """Index tuples covering ``shape`` in row-major order, each selecting at most ``per_chunk`` elements."""
    numel = math.prod(shape)
    if numel <= per_chunk or not shape:
        if numel:
            yield ()
        return
    row = math.prod(shape[1:])
    if row <= per_chunk:
        step = per_chunk // row
        for start in range(0, shape[0], step):
            yield (slice(start, start + step),)
        return
    for i in range(shape[0]):
        for sub in _blocks(shape[1:], per_chunk):
            yield (i, *sub)


def _staged(
    tensors: tuple[torch.Tensor, ...], blocks: list[tuple], dev: torch.device, per_chunk: int
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Double-buffered host→device copies: chunk i+1 is staged and copied while the GPU reduces chunk i."""
    compute = torch.cuda.current_stream(dev)
    copier = torch.cuda.Stream(dev)
    pinned = [[torch.empty(per_chunk, dtype=t.dtype, pin_memory=True) for t in tensors] for _ in range(2)]
    on_gpu = [[torch.empty(per_chunk, dtype=t.dtype, device=dev) for t in tensors] for _ in range(2)]
    copied = [torch.cuda.Event(), torch.cuda.Event()]
    consumed = [torch.cuda.Event(), torch.cuda.Event()]
    sizes = [0] * len(blocks)

    def stage(i: int) -> None:
        slot = i % 2
        copied[slot].synchronize()  # the pinned buffer's previous copy has been read out
        for host, t in zip(pinned[slot], tensors):
            piece = t[blocks[i]].reshape(-1)
            sizes[i] = piece.numel()
            host[: sizes[i]].copy_(piece)
        with torch.cuda.stream(copier):
            copier.wait_event(consumed[slot])  # the GPU buffer's previous chunk has been reduced
            for gpu, host in zip(on_gpu[slot], pinned[slot]):
                gpu[: sizes[i]].copy_(host[: sizes[i]], non_blocking=True)
            copied[slot].record(copier)

    try:
        if blocks:
            stage(0)
        for i in range(len(blocks)):
            if i + 1 < len(blocks):
                stage(i + 1)
            slot = i % 2
            compute.wait_event(copied[slot])
            yield tuple(gpu[: sizes[i]] for gpu in on_gpu[slot])
            consumed[slot].record(compute)
    finally:
        copier.synchronize()
        compute.synchronize()


def tensor_stats(
    t: torch.Tensor, *, device: str | torch.device = "cpu", resolution: int | None = DEFAULT_RESOLUTION
) -> TensorStats:
    """Statistics of ``t`` streamed in chunks on ``device`` (``cpu`` or ``cuda[:N]``); see the module docstring."""
    dev = resolve_device(device)
    if t.layout != torch.strided or t.device.type == "meta":
        raise ValueError(f"tensor_stats needs a dense tensor with data, got layout {t.layout} on {t.device}")
    t = t.detach()
    if t.is_quantized:
        t = t.dequantize()
    if t.numel() <= EXACT_PERCENTILE_NUMEL:
        return _small_stats(t, resolution)
    return finish(accumulate(t, device=dev), resolution)


def accumulate(t: torch.Tensor, *, device: str | torch.device = "cpu") -> _Acc:
    """The running sums of ``t`` (any size, streamed), shifted by its first element: one part of a tensor whose
    parts are merged with :meth:`_Acc.merged` and finished with :func:`finish` (a DCP tensor's chunks)."""
    dev = resolve_device(device)
    t = t.detach()
    if t.is_quantized:
        t = t.dequantize()
    first = as_float(t[(0,) * t.dim()].reshape(1).cpu()).double().item() if t.numel() else 0.0
    acc = _Acc(numel=t.numel(), shift=first if math.isfinite(first) else 0.0, codes_only=t.dtype == torch.bfloat16)
    kernels = _cpu_kernels() if dev.type == "cpu" else None
    chunks = (as_float(c) for (c,) in iter_chunks(t, device=dev))
    if t.dtype == torch.bfloat16:
        _count_bf16(chunks, acc, kernels, dev)
        _moments_from_codes(acc)
    elif kernels is not None:
        _reduce_numba(chunks, acc, kernels)
    else:
        _reduce_torch(chunks, acc, dev)
    return acc


def finish(acc: _Acc, resolution: int | None = DEFAULT_RESOLUTION) -> TensorStats:
    """The statistics of accumulated (possibly merged) sums: percentiles and histogram from the code counts."""
    hist = Histogram.from_code_counts(acc.counts)
    exact = not acc.low_bits
    pct = hist.percentiles(_QS, at_edges=True) if exact else hist.percentiles(_QS)
    return _finish(acc, hist, pct, exact, resolution)


@functools.cache
def _cpu_kernels() -> ModuleType | None:
    """The numba kernels, or None where numba is missing (the torch reduction then runs on CPU too)."""
    try:
        from ckptboard.core import _kernels
    except ImportError:  # pragma: no cover - numba is a declared dependency
        return None
    return _kernels


def _numpy(chunk: torch.Tensor) -> np.ndarray:
    """Zero-copy NumPy view of a CPU chunk, copied only when misaligned (numba compiles aligned arrays only)."""
    arr = chunk.numpy()
    return arr if arr.flags.aligned else arr.copy()


def _count_bf16(chunks: Iterator[torch.Tensor], acc: _Acc, kernels: ModuleType | None, dev: torch.device) -> None:
    if kernels is not None:
        for chunk in chunks:
            kernels.count_codes16(_numpy(chunk.view(torch.int16)).view(np.uint16), acc.counts)
        return
    counts = torch.zeros(N_CODES, dtype=torch.int64, device=dev)
    for chunk in chunks:
        counts += torch.bincount(chunk.view(torch.int16).int() & 0xFFFF, minlength=N_CODES)
    acc.counts = counts.cpu().numpy()


def _moments_from_codes(acc: _Acc) -> None:
    """bf16 data: every statistic follows exactly from the counts of its 65,536 codes."""
    counts = acc.counts
    acc.nans = int(counts[0x7F81:0x8000].sum() + counts[0xFF81:].sum())
    acc.posinfs, acc.neginfs = int(counts[0x7F80]), int(counts[0xFF80])
    acc.zeros = int(counts[0] + counts[0x8000])
    values, c = code_values(counts)
    acc.nfin = int(c.sum())
    if not acc.nfin:
        return
    c = c.astype(np.float64)
    acc.shift = float(np.dot(c, values) / acc.nfin)
    d = values - acc.shift
    acc.s1, acc.s2, acc.sa = float(np.dot(c, d)), float(np.dot(c, d * d)), float(np.dot(c, np.abs(values)))
    acc.mn, acc.mx = float(values.min()), float(values.max())


def _key_to_float(key: int) -> float:
    k = np.array([key], dtype=np.int32)
    return float((k ^ ((k >> 31) & 0x7FFFFFFF)).view(np.float32)[0])


def _reduce_numba(chunks: Iterator[torch.Tensor], acc: _Acc, k: ModuleType) -> None:
    sums = np.zeros(3)  # s1, s2, sa of the values the fast kernel counted
    ints = np.array([2**31 - 1, -(2**31), 0, 0], dtype=np.int64)  # min key, max key, zeros, low-bit OR
    for chunk in chunks:
        vals = _numpy(chunk)
        if vals.dtype == np.float32:
            bits = vals.view(np.int32)
            done = k.fast_f32(vals, bits, acc.shift, acc.counts, sums, ints)
            acc.nfin += done
            if done == vals.size:
                continue
            vals, bits = vals[done:], bits[done:]  # from the first block holding NaN/Inf on
        else:
            rounded = chunk.clamp(-_F32_MAX, _F32_MAX).float()
            acc.low_bits |= not torch.equal(rounded.double(), chunk)  # fp32 rounding hid low bits
            bits = _numpy(rounded).view(np.int32)
        _add_exact(acc, k.exact_chunk(vals, bits, acc.shift, acc.counts))
    if ints[0] <= ints[1]:  # the fast kernel counted something
        acc.s1, acc.s2, acc.sa = acc.s1 + sums[0], acc.s2 + sums[1], acc.sa + sums[2]
        acc.mn, acc.mx = min(acc.mn, _key_to_float(ints[0])), max(acc.mx, _key_to_float(ints[1]))
        acc.zeros += int(ints[2])
        acc.low_bits |= bool(ints[3])


def _add_exact(acc: _Acc, r: tuple) -> None:
    nfin, s1, s2, sa, mn, mx, zeros, nans, pos, neg, low = r
    acc.nfin += nfin
    acc.s1 += s1
    acc.s2 += s2
    acc.sa += sa
    acc.mn = min(acc.mn, mn)
    acc.mx = max(acc.mx, mx)
    acc.zeros += zeros
    acc.nans += nans
    acc.posinfs += pos
    acc.neginfs += neg
    acc.low_bits |= bool(low)


def _reduce_torch(chunks: Iterator[torch.Tensor], acc: _Acc, dev: torch.device) -> None:
    """The same reduction in torch ops, accumulated on ``dev`` with one synchronisation at the end."""
    f64 = dict(dtype=torch.float64, device=dev)
    i64 = dict(dtype=torch.int64, device=dev)
    sums = torch.zeros(3, **f64)  # s1, s2, sa
    ext = torch.tensor([math.inf, -math.inf], **f64)  # min, max
    tallies = torch.zeros(6, **i64)  # nfin, zeros, nans, posinfs, neginfs, low_bits
    counts = torch.zeros(N_CODES, **i64)
    nan_code = torch.tensor(0x7FC0, dtype=torch.int32, device=dev)
    for x in chunks:
        finite = torch.isfinite(x)
        xd = x.double()
        d = torch.where(finite, xd - acc.shift, 0.0)
        sums += torch.stack([d.sum(), (d * d).sum(), torch.where(finite, xd.abs(), 0.0).sum()])
        lo_hi = torch.stack([torch.where(finite, xd, math.inf).min(), torch.where(finite, xd, -math.inf).max()])
        ext = torch.stack([torch.minimum(ext[0], lo_hi[0]), torch.maximum(ext[1], lo_hi[1])])
        rounded = x if x.dtype == torch.float32 else x.clamp(-_F32_MAX, _F32_MAX).float()
        bits = rounded.view(torch.int32)
        low = (((bits & 0xFFFF) != 0) | (rounded.double() != xd)) & finite
        tallies += torch.stack([
            finite.sum(), (x == 0).sum(), torch.isnan(x).sum(), (x == math.inf).sum(), (x == -math.inf).sum(),
            low.any().long(),
        ])
        codes = torch.where(finite, (bits >> 16) & 0xFFFF, nan_code)
        counts += torch.bincount(codes.long(), minlength=N_CODES)
    s, e, n = sums.tolist(), ext.tolist(), tallies.tolist()
    acc.s1, acc.s2, acc.sa = s
    acc.mn, acc.mx = e
    acc.nfin, acc.zeros, acc.nans, acc.posinfs, acc.neginfs = n[:5]
    acc.low_bits = bool(n[5])
    acc.counts = counts.cpu().numpy()


def _small_stats(t: torch.Tensor, resolution: int | None) -> TensorStats:
    """Tensors of at most ``EXACT_PERCENTILE_NUMEL`` elements: NumPy on CPU, exact percentiles by sorting."""
    x = as_float(t.reshape(-1).cpu())
    x = (x.float() if x.dtype == torch.bfloat16 else x).numpy().astype(np.float64)
    finite = np.isfinite(x)
    v = np.sort(x[finite])
    acc = _Acc(numel=x.size, shift=float(v[0]) if v.size else 0.0, nfin=v.size, zeros=int(np.sum(v == 0)))
    acc.nans = int(np.isnan(x).sum())
    acc.posinfs, acc.neginfs = int(np.sum(x == math.inf)), int(np.sum(x == -math.inf))
    pct = np.full(_QS.shape, _NAN)
    if v.size:
        d = v - acc.shift
        # pairwise sums (not np.dot's BLAS order): core._batch_kernels reproduces them bit for bit
        with np.errstate(over="ignore"):  # a square past float64's range is inf, as np.dot gave it
            acc.s1, acc.s2, acc.sa = float(d.sum()), float((d * d).sum()), float(np.abs(v).sum())
        acc.mn, acc.mx = float(v[0]), float(v[-1])
        rank = _QS / 100.0 * (v.size - 1)  # NumPy's linear method, without np.percentile's overhead
        below = np.floor(rank).astype(np.int64)
        above = np.minimum(below + 1, v.size - 1)
        pct = v[below] + (rank - below) * (v[above] - v[below])
    v += 0.0  # -0.0 becomes 0.0: sorted values then give bf16 codes in runs, one per bin
    codes = (np.clip(v, -_F32_MAX, _F32_MAX).astype(np.float32).view(np.int32) >> 16) & 0xFFFF
    return _finish(acc, Histogram.from_sorted_codes(codes), pct, True, resolution)


def _finish(acc: _Acc, hist: Histogram, pct: np.ndarray, exact: bool, resolution: int | None) -> TensorStats:
    n = acc.nfin
    mean = std = abs_mean = norm = mn = mx = _NAN
    if n:
        m1 = acc.s1 / n
        mn, mx = acc.mn, acc.mx
        constant = mn == mx
        mean = mn if constant else min(max(acc.shift + m1, mn), mx)
        std = 0.0 if constant else math.sqrt(max(acc.s2 / n - m1 * m1, 0.0))
        abs_mean = acc.sa / n
        norm = math.sqrt(max(acc.s2 + acc.shift * (2.0 * acc.s1 + n * acc.shift), 0.0))
        pct = np.clip(pct, mn, mx)
        pct[0], pct[-1] = mn, mx
        if resolution:
            hist = hist.coarsen((mx - mn) / resolution)
    return TensorStats(
        numel=int(acc.numel), mean=float(mean), std=float(std), min=float(mn), max=float(mx),
        abs_mean=float(abs_mean), norm=float(norm), zeros=int(acc.zeros), nans=int(acc.nans),
        posinfs=int(acc.posinfs), neginfs=int(acc.neginfs),
        percentiles=dict(zip(PERCENTILE_COLUMNS, pct.tolist())),
        histogram=hist, percentiles_exact=bool(exact) if n else False,
    )


def add_finite_codes(x: torch.Tensor, counts: torch.Tensor) -> None:
    """Add the bf16 codes of the finite values of ``x`` (any float dtype) to ``counts`` (65,536 int64, on x's device):
    the histogram of a derived quantity (a difference, √v̂) streamed chunk by chunk."""
    finite = torch.isfinite(x)
    bits = x.clamp(-_F32_MAX, _F32_MAX).float().view(torch.int32)
    counts += torch.bincount(((bits >> 16) & 0xFFFF)[finite].long(), minlength=N_CODES)
