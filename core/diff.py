"""Any two checkpoints compared tensor by tensor, across renamed or prefixed keys.

Alignment, in three passes over the model tensors of A and B (each tensor is matched at most once):

1. ``exact``: the same display name (``group/name`` when a checkpoint has several groups).
2. ``prefix``: the same name after stripping known wrapper prefixes (:data:`KNOWN_PREFIXES`, repeatedly) and
   PEFT's ``.base_layer`` infix, where that stripped name is unique on both sides.
3. ``shape``: the shapes that are left exactly once on each side, paired in A's file order.

A pair whose names match (pass 1 or 2) but whose shapes differ is a *shape mismatch*, never diffed. What is left is
``only_a`` / ``only_b``.

Per matched pair, streamed in chunks (one tensor pair in memory at a time), with
``d = b - a`` (0 where a and b are equal, NaN and Inf included) and sums in float64:

- ``rel_change`` = ‖d‖ / ‖a‖ (NaN when ‖a‖ = 0); ``cosine`` = ⟨a, b⟩ / (‖a‖ ‖b‖) (NaN when either norm is 0);
- ``sign_flips``: elements where a and b are both non-zero with opposite signs; ``sign_flip_fraction`` = that / numel;
- ``max_abs_diff``, ``mean_diff``: over the finite differences;
- the summary's ``rel_change`` = sqrt(Σ‖d‖²) / sqrt(Σ‖a‖²) over the matched parameters (buffers left out);
- ``histogram`` of the finite differences on the bf16 grid of :mod:`ckptboard.core.histogram`, merged into at most
  ``bins`` cells.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckptboard.core.errors import UsageError
from ckptboard.core.histogram import N_CODES, Histogram
from ckptboard.core.records import StrEnum, TensorInfo, TensorKind
from ckptboard.core.stats import _numpy, add_finite_codes, as_float, iter_chunks
from ckptboard.core.updates import _common_float

__all__ = [
    "MatchRule",
    "KNOWN_PREFIXES",
    "Pair",
    "Alignment",
    "TensorDiff",
    "DiffReport",
    "align",
    "tensor_diff",
    "diff_checkpoints",
    "strip_known_prefixes",
    "DEFAULT_BINS",
]

# Wrappers that prefix every key: PEFT, DDP/DataParallel, torch.compile, Fabric, FSDP, activation checkpointing,
# and Lightning's or a training script's ``model.`` attribute. Longest first.
KNOWN_PREFIXES: tuple[str, ...] = (
    "base_model.model.",
    "_checkpoint_wrapped_module.",
    "_fsdp_wrapped_module.",
    "_forward_module.",
    "_orig_mod.",
    "module.",
    "model.",
)
_PEFT_INFIX = ".base_layer."
DEFAULT_BINS = 64


class MatchRule(StrEnum):
    """How a pair of tensors was aligned."""

    EXACT = "exact"
    PREFIX = "prefix"
    SHAPE = "shape"


@dataclass
class Pair:
    """Tensor ``a`` of checkpoint A aligned with tensor ``b`` of checkpoint B by ``match``."""

    a: TensorInfo
    b: TensorInfo
    match: MatchRule


@dataclass
class Alignment:
    """Matched pairs (in A's order), name matches with different shapes, and what is left on each side."""

    pairs: list[Pair] = field(default_factory=list)
    shape_mismatches: list[Pair] = field(default_factory=list)
    only_a: list[TensorInfo] = field(default_factory=list)
    only_b: list[TensorInfo] = field(default_factory=list)
    ambiguous: int = 0  # stripped names that occur more than once on a side (not matched by prefix)


@dataclass
class TensorDiff:
    """How tensor ``b`` differs from tensor ``a`` (see the module docstring)."""

    numel: int
    norm_a: float
    norm_b: float
    diff_norm: float
    rel_change: float
    cosine: float
    sign_flips: int
    sign_flip_fraction: float
    max_abs_diff: float
    mean_diff: float
    histogram: Histogram


@dataclass
class DiffReport:
    """The comparison of two checkpoints: alignment plus one :class:`TensorDiff` per matched pair."""

    path_a: str
    path_b: str
    alignment: Alignment
    diffs: list[TensorDiff]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``ckptboard diff --json`` object (a public contract, documented in the README)."""
        al = self.alignment
        tensors = [_pair_json(p, d) for p, d in zip(al.pairs, self.diffs)]
        by_rule = Counter(str(p.match) for p in al.pairs)
        params = [d for p, d in zip(al.pairs, self.diffs) if p.a.kind == TensorKind.PARAMETER]
        sq_a = sum(d.norm_a ** 2 for d in params)  # buffers (step counters, running stats) left out
        sq_d = sum(d.diff_norm ** 2 for d in params)
        return {
            "a": self.path_a,
            "b": self.path_b,
            "summary": {
                "matched": len(al.pairs),
                **{str(rule): by_rule.get(str(rule), 0) for rule in MatchRule},
                "only_a": len(al.only_a),
                "only_b": len(al.only_b),
                "shape_mismatches": len(al.shape_mismatches),
                "identical": sum(1 for d in self.diffs if d.diff_norm == 0.0),
                "numel": sum(d.numel for d in self.diffs),
                "sign_flips": sum(d.sign_flips for d in self.diffs),
                "rel_change": _ratio(math.sqrt(sq_d), math.sqrt(sq_a)),
            },
            "tensors": tensors,
            "shape_mismatches": [
                {"a": p.a.name, "b": p.b.name, "shape_a": list(p.a.shape), "shape_b": list(p.b.shape)}
                for p in al.shape_mismatches
            ],
            "only_a": [_side_json(t) for t in al.only_a],
            "only_b": [_side_json(t) for t in al.only_b],
            "notes": list(self.notes),
        }


def strip_known_prefixes(name: str) -> str:
    """``name`` without leading :data:`KNOWN_PREFIXES` (repeatedly) and with PEFT's ``.base_layer`` dropped."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in KNOWN_PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name, stripped = name[len(prefix):], True
                break
    return name.replace(_PEFT_INFIX, ".")


def align(a: list[TensorInfo], b: list[TensorInfo], *, qualify_a: bool = False, qualify_b: bool = False) -> Alignment:
    """Align the tensors of A with those of B (exact, prefix, shape; see the module docstring).

    ``qualify_*``: the side has several groups, so its display names are ``group/name``.
    """
    out = Alignment()
    left_a, left_b = dict.fromkeys(range(len(a))), dict.fromkeys(range(len(b)))  # ordered sets of indices
    found: dict[int, Pair] = {}

    def take(i: int, j: int, rule: MatchRule) -> None:
        del left_a[i], left_b[j]
        pair = Pair(a[i], b[j], rule)
        if tuple(a[i].shape) == tuple(b[j].shape):
            found[i] = pair
        else:
            out.shape_mismatches.append(pair)

    names_b = {_display(t, qualify_b): j for j, t in enumerate(b)}
    for i, t in enumerate(a):
        j = names_b.get(_display(t, qualify_a))
        if j is not None:
            take(i, j, MatchRule.EXACT)

    stripped_a = _unique({i: strip_known_prefixes(a[i].name) for i in left_a})
    stripped_b = _unique({j: strip_known_prefixes(b[j].name) for j in left_b})
    out.ambiguous = stripped_a.ambiguous + stripped_b.ambiguous
    for name, i in stripped_a.index.items():
        j = stripped_b.index.get(name)
        if j is not None:
            take(i, j, MatchRule.PREFIX)

    shapes_a = Counter(tuple(a[i].shape) for i in left_a)
    by_shape_b: dict[tuple, list[int]] = {}
    for j in left_b:
        by_shape_b.setdefault(tuple(b[j].shape), []).append(j)
    for i in list(left_a):
        shape = tuple(a[i].shape)
        if shapes_a[shape] == 1 and len(by_shape_b.get(shape, ())) == 1:
            take(i, by_shape_b[shape][0], MatchRule.SHAPE)

    out.pairs = [found[i] for i in sorted(found)]
    out.only_a = [a[i] for i in left_a]
    out.only_b = [b[j] for j in left_b]
    return out


def tensor_diff(a: torch.Tensor, b: torch.Tensor, *, device: str | torch.device = "cpu", bins: int = DEFAULT_BINS) -> TensorDiff:
    """Compare two tensors of one shape chunk by chunk on ``device`` (see the module docstring)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"tensor_diff needs tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = (t.detach().dequantize() if t.is_quantized else t.detach() for t in (a, b))
    dev = torch.device(device)
    kernels = _cpu_kernels() if dev.type == "cpu" else None
    if kernels is not None:
        aa, bb, ab, dd, ds, top, flips, n_finite, counts = _sums_numba(a, b, kernels)
    else:
        aa, bb, ab, dd, ds, top, flips, n_finite, counts = _sums_torch(a, b, dev)
    hist = Histogram.from_code_counts(counts)
    if hist.counts.size > 1 and bins:
        hist = hist.coarsen((hist.hi[-1] - hist.lo[0]) / bins)
    numel = a.numel()
    norm_a, norm_b, diff_norm = math.sqrt(aa), math.sqrt(bb), math.sqrt(dd)
    return TensorDiff(
        numel=numel,
        norm_a=norm_a,
        norm_b=norm_b,
        diff_norm=diff_norm,
        rel_change=_ratio(diff_norm, norm_a),
        cosine=_ratio(ab, norm_a * norm_b),
        sign_flips=int(flips),
        sign_flip_fraction=_ratio(flips, numel),
        max_abs_diff=top if n_finite else math.nan,
        mean_diff=ds / n_finite if n_finite else math.nan,
        histogram=hist,
    )


def _sums_numba(a: torch.Tensor, b: torch.Tensor, kernels) -> tuple:
    """The sums of :func:`tensor_diff` by the numba kernel, chunk by chunk (CPU)."""
    sums = np.zeros(6)
    flips = n_finite = 0
    counts = np.zeros(N_CODES, dtype=np.int64)
    scratch = np.empty(kernels.BLOCK, dtype=np.float32)
    for chunk in iter_chunks(a, b):
        x, y = (_numpy(c) for c in _common_float(chunk))
        *s, f, n = kernels.diff_chunk(x, y, scratch, counts)
        sums[:5] += s[:5]
        sums[5] = max(sums[5], s[5])
        flips, n_finite = flips + f, n_finite + n
    return (*sums.tolist(), flips, n_finite, counts)


def _sums_torch(a: torch.Tensor, b: torch.Tensor, dev: torch.device) -> tuple:
    """The same sums in torch ops on ``dev`` (CUDA), one synchronisation at the end."""
    f64 = dict(dtype=torch.float64, device=dev)
    sums = torch.zeros(5, **f64)  # a², b², ab, d², d over finite d
    ext = torch.zeros(1, **f64)  # max |d| over finite d
    tallies = torch.zeros(2, dtype=torch.int64, device=dev)  # sign flips, finite d
    counts = torch.zeros(N_CODES, dtype=torch.int64, device=dev)
    for ca, cb in iter_chunks(a, b, device=dev):
        xa, xb = as_float(ca).double(), as_float(cb).double()
        same = (xa == xb) | (torch.isnan(xa) & torch.isnan(xb))
        d = torch.where(same, 0.0, xb - xa)
        finite = torch.isfinite(d)
        df = torch.where(finite, d, 0.0)
        sums += torch.stack([(xa * xa).sum(), (xb * xb).sum(), (xa * xb).sum(), (d * d).sum(), df.sum()])
        ext = torch.maximum(ext, df.abs().max().reshape(1))
        tallies += torch.stack([((xa * xb) < 0).sum(), finite.sum()])
        add_finite_codes(torch.where(finite, d, math.nan), counts)
    return (*sums.tolist(), float(ext.item()), *tallies.tolist(), counts.cpu().numpy())


def diff_checkpoints(
    path_a: str | Path,
    path_b: str | Path,
    *,
    device: str = "cpu",
    trust: bool = False,
    group_a: str | None = None,
    group_b: str | None = None,
    bins: int = DEFAULT_BINS,
) -> DiffReport:
    """Open both checkpoints, align their model tensors and diff each matched pair, one pair in memory at a time."""
    from ckptboard.core.classify import classify
    from ckptboard.core.reader import open_checkpoint

    if bins < 1:
        raise UsageError(f"--bins must be at least 1, got {bins}")
    with open_checkpoint(path_a, device="cpu", trust=trust) as ca, open_checkpoint(path_b, device="cpu", trust=trust) as cb:
        classify(ca)
        classify(cb)
        tensors_a, qualify_a = _side(ca, group_a, "--group-a")
        tensors_b, qualify_b = _side(cb, group_b, "--group-b")
        alignment = align(tensors_a, tensors_b, qualify_a=qualify_a, qualify_b=qualify_b)
        diffs = []
        for pair in alignment.pairs:
            diffs.append(tensor_diff(ca.load(pair.a), cb.load(pair.b), device=device, bins=bins))
    notes = []
    if alignment.ambiguous:
        notes.append(
            f"{alignment.ambiguous} names are not unique once prefixes are stripped (several groups?); "
            "pass --group-a/--group-b to compare one state_dict of each"
        )
    return DiffReport(str(path_a), str(path_b), alignment, diffs, notes)


@functools.cache
def _cpu_kernels():
    """The numba kernels, or None where numba is missing (the torch path then runs on CPU too)."""
    try:
        from ckptboard.core import _extra_kernels
    except ImportError:  # pragma: no cover - numba is a declared dependency
        return None
    return _extra_kernels


def _side(ckpt: Any, group: str | None, option: str) -> tuple[list[TensorInfo], bool]:
    """The tensors to compare of one checkpoint (one group, or all), and whether names need their group."""
    if group is None:
        return ckpt.tensors, len(ckpt.groups) > 1
    names = [g.name for g in ckpt.groups]
    if group not in names:
        raise UsageError(f"{ckpt.path}: no group {group!r} for {option}; its groups are {names}")
    return next(g.tensors for g in ckpt.groups if g.name == group), False


def _display(info: TensorInfo, qualify: bool) -> str:
    return f"{info.group}/{info.name}" if qualify else info.name


@dataclass
class _Unique:
    index: dict[str, int]
    ambiguous: int


def _unique(names: dict[int, str]) -> _Unique:
    """Stripped names that occur once, mapped to their index; the number that occur more often."""
    counts = Counter(names.values())
    return _Unique({n: i for i, n in names.items() if counts[n] == 1}, sum(c for c in counts.values() if c > 1))


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 and math.isfinite(den) else math.nan


def _side_json(info: TensorInfo) -> dict[str, Any]:
    return {"name": info.name, "group": info.group, "shape": list(info.shape), "dtype": info.dtype,
            "tied_to": info.tied_to}


def _pair_json(pair: Pair, d: TensorDiff) -> dict[str, Any]:
    values = asdict(d)
    values.pop("histogram")
    hist = d.histogram
    return {
        "a": pair.a.name,
        "b": pair.b.name,
        "match": str(pair.match),
        "kind": str(pair.a.kind),
        "shape": list(pair.a.shape),
        "dtype_a": pair.a.dtype,
        "dtype_b": pair.b.dtype,
        **{k: _json_float(v) for k, v in values.items()},
        "histogram": {"lo": hist.lo.tolist(), "hi": hist.hi.tolist(), "counts": hist.counts.tolist()},
    }


def _json_float(value: Any) -> Any:
    """NaN and ±Inf as null: strict JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
