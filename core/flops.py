"""Counting the FLOPs of a model's forward, per module, with ``torch.utils.flop_counter.FlopCounterMode``.

Definitions (the ``ckptboard flops --json`` contract):

- ``flops``: floating-point operations, a multiply-add counting 2 (``FlopCounterMode``'s convention); ``macs`` =
  ``flops // 2`` (exact: every formula counts whole multiply-adds). Unit: ``"FLOP"``.
- ``modules``: every module of ``model.named_modules()`` (parents first), keyed by its dotted path, ``""`` for the
  model. A module's figure is inclusive: all ops run while it was on the call stack; a container that is never
  called (``nn.ModuleList``) gets the sum of its children. A module the forward never calls shows 0.
- ``unsupported_ops``: every aten op the forward executed (after the counter's own decompositions) that has no
  FLOP formula and is not a pure data-movement op (views, copies, factories, cat/stack, indexing, embedding
  lookup). These are counted as 0 FLOPs by the counter and listed so that nothing is silently zero: ``pointwise``
  ones (add, relu, …) by the counter's design, ``reduction`` and ``other`` ones (softmax, norms, fused kernels
  like ``mkldnn_rnn_layer``) may hide real work.

The forward runs in eval mode under ``torch.no_grad()``, on the ``meta`` device when it can (no memory, no time),
else on the model's own device with inputs of the given shapes (floats seeded ``randn``, integers zeros, which
are in range for any embedding). Off meta, mkldnn RNN kernels and the MultiheadAttention fast path are turned off
and CPU flash attention is given the SDPA formula, so that fused kernels decompose into counted matrix multiplies
and the counts match those on meta.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from torch.utils.module_tracker import ModuleTracker

from ckptboard.core.errors import FlopCountError, UsageError
from ckptboard.core.records import StrEnum
from ckptboard.core.size import SizeNode

__all__ = [
    "FLOP_UNIT",
    "OpCategory",
    "InputSpec",
    "parse_input_specs",
    "ModuleFlops",
    "UnsupportedOp",
    "FlopReport",
    "count_flops",
    "module_table",
]

FLOP_UNIT = "FLOP"

_SHAPE = re.compile(r"\s*\d+(\s*[,x]\s*\d+)*\s*,?\s*")

# Ops that move, view, make or pick data and do no arithmetic: never listed as unsupported.
_DATA_MOVEMENT_OPS = frozenset({
    "clone", "copy", "copy_", "_to_copy", "to", "contiguous", "detach", "detach_", "lift_fresh", "lift_fresh_copy",
    "alias", "_unsafe_view", "view", "reshape", "_reshape_alias", "empty", "empty_like", "empty_strided",
    "new_empty", "new_empty_strided", "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full",
    "full_like", "new_full", "fill", "fill_", "zero_", "scalar_tensor", "arange", "linspace", "rand", "rand_like",
    "randn", "randn_like", "randint", "randint_like", "randperm", "normal_", "uniform_", "cat", "stack", "split",
    "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes", "unsafe_chunk", "chunk", "index", "_unsafe_index",
    "index_select", "gather", "take", "embedding", "masked_fill", "masked_fill_", "where", "triu", "tril",
    "constant_pad_nd", "repeat", "roll", "flip", "slice_scatter", "select_scatter", "index_put", "index_put_",
    "scatter", "scatter_", "_local_scalar_dense", "item", "set_", "resize_", "_assert_async",
    "_assert_tensor_metadata", "sym_constrain_range", "sym_constrain_range_for_size", "expand_copy",
    "permute_copy", "t_copy", "transpose_copy", "view_copy", "unsqueeze_copy", "squeeze_copy",
})


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU flash attention computes what SDPA does: the same two batched matmuls."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop}


class OpCategory(StrEnum):
    POINTWISE = "pointwise"
    REDUCTION = "reduction"
    OTHER = "other"


@dataclass(frozen=True)
class InputSpec:
    """One input of the forward: its shape, dtype (without ``torch.``) and keyword (``""``: positional)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str = ""  # passed as ``name=tensor`` (transformers' input_ids, decoder_input_ids, pixel_values)

    @property
    def label(self) -> str:
        label = "(" + ",".join(str(d) for d in self.shape) + f") {self.dtype}"
        return f"{self.name}={label}" if self.name else label

    def make(self, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
        """A tensor of this shape: seeded normal floats, integer/bool zeros (valid token ids); empty on meta."""
        dtype = getattr(torch, self.dtype)
        if torch.device(device).type == "meta":
            return torch.empty(self.shape, dtype=dtype, device=device)
        if dtype.is_floating_point or dtype.is_complex:
            return torch.randn(self.shape, generator=generator, dtype=dtype).to(device)
        return torch.zeros(self.shape, dtype=dtype, device=device)

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, **({"name": self.name} if self.name else {})}


def parse_input_specs(shapes: Sequence[str], dtypes: Sequence[str] = ()) -> list[InputSpec]:
    """``["1,3,32,32"]`` (+ one dtype per shape, or none for float32) → InputSpecs; UsageError when malformed."""
    if not shapes:
        raise UsageError("give the model's input shape with --input-shape, e.g. --input-shape 1,3,32,32")
    if dtypes and len(dtypes) != len(shapes):
        raise UsageError(
            f"{len(shapes)} --input-shape but {len(dtypes)} --input-dtype: give one --input-dtype per "
            "--input-shape, in the same order, or none for float32"
        )
    return [InputSpec(_parse_shape(s), _parse_dtype(d)) for s, d in zip(shapes, dtypes or ["float32"] * len(shapes))]


@dataclass
class ModuleFlops:
    """The FLOPs counted while one module ran (inclusive of its children)."""

    module: str
    flops: int
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return 0 if not self.module else self.module.count(".") + 1

    @property
    def macs(self) -> int:
        return self.flops // 2

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "flops": self.flops, "macs": self.macs, "depth": self.depth, "by_op": self.by_op}


@dataclass
class UnsupportedOp:
    """An op the forward ran that has no FLOP formula: counted as 0, and listed here."""

    op: str  # e.g. "aten.native_layer_norm"
    category: str  # OpCategory value
    calls: int
    modules: list[str]  # dotted paths of the innermost modules it ran in

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "category": self.category, "calls": self.calls, "modules": self.modules}


@dataclass
class FlopReport:
    """Counted FLOPs of one forward: the total, per module, and the ops counted as 0 for lack of a formula."""

    model: str  # the model's class name
    inputs: list[InputSpec]
    device: str  # where the forward ran: "meta", or the model's device on fallback
    total_flops: int
    modules: list[ModuleFlops]
    unsupported_ops: list[UnsupportedOp]
    notes: list[str] = field(default_factory=list)

    @property
    def total_macs(self) -> int:
        return self.total_flops // 2

    def find(self, module: str) -> ModuleFlops | None:
        return next((m for m in self.modules if m.module == module), None)

    def to_json(self, max_depth: int | None = None) -> dict[str, Any]:
        """The ``ckptboard flops --json`` object (modules down to ``max_depth``)."""
        return {
            "total_flops": self.total_flops,
            "unit": FLOP_UNIT,
            "modules": [m.to_json() for m in self.modules if max_depth is None or m.depth <= max_depth],
            "unsupported_ops": [op.to_json() for op in self.unsupported_ops],
            "macs": self.total_macs,
            "model": self.model,
            "inputs": [spec.to_json() for spec in self.inputs],
            "device": self.device,
            "notes": list(self.notes),
        }


def count_flops(
    model: nn.Module,
    inputs: Sequence[InputSpec] | InputSpec | Sequence[int],
    *,
    build_cpu_model: Callable[[], nn.Module] | None = None,
    meta_first: bool = True,
) -> FlopReport:
    """Count the FLOPs of ``model(*inputs)``: on ``meta`` when the forward runs there, else on the model's device.

    ``inputs``: InputSpecs, or one shape such as ``(1, 3, 32, 32)`` (float32). A model built on meta cannot run
    elsewhere: ``build_cpu_model`` then builds the real one for the fallback. ``meta_first=False`` skips meta.
    """
    inputs = _as_specs(inputs)
    name = type(model).__name__
    shapes = ", ".join(spec.label for spec in inputs)
    notes: list[str] = []
    if meta_first:
        try:
            counts, ops = _run(model, inputs, torch.device("meta"))
        except Exception as e:  # the forward is arbitrary user code: any failure means "not on meta"
            notes.append(f"the forward does not run on the meta device ({_one_line(e)})")
        else:
            return _report(model, inputs, "meta", counts, ops, notes)
    if _has_meta_tensors(model):
        if build_cpu_model is None:
            raise FlopCountError(
                f"the forward of {name} fails on the meta device with input {shapes} and the model has no real "
                "weights to run elsewhere: pass a CPU model or build_cpu_model"
                + (f" ({notes[0]})" if notes else "")
            )
        model = build_cpu_model()
    device = str(_model_device(model))
    try:
        counts, ops = _run(model, inputs, torch.device(device))
    except Exception as e:
        raise FlopCountError(
            f"the forward of {name} failed on input {shapes}: {type(e).__name__}: {_one_line(e)} "
            "(check --input-shape/--input-dtype against what the model expects)"
        ) from e
    if notes:
        notes[-1] += f"; counted on {device} instead"
    return _report(model, inputs, device, counts, ops, notes)


def module_table(
    tree: SizeNode | None = None, report: FlopReport | None = None, max_depth: int | None = None
) -> pd.DataFrame:
    """Sizes and FLOPs on one module tree: columns ``module, depth, params, buffers, bytes, flops, macs``.

    Size columns are 0 for a model module with no tensors in the checkpoint; FLOP columns are NA for a checkpoint
    module the model lacks; a column is NA throughout when its side (tree or report) is not given.
    """
    size_nodes = {n.module: n for n in tree.walk()} if tree is not None else {}
    flop_nodes = {m.module: m for m in report.modules} if report is not None else {}
    rows = []
    for path in _merged_order(list(flop_nodes), list(size_nodes)):
        depth = 0 if not path else path.count(".") + 1
        if max_depth is not None and depth > max_depth:
            continue
        node, flops = size_nodes.get(path), flop_nodes.get(path)
        if node is not None:
            sizes = (node.parameters, node.buffers, node.bytes)
        else:
            sizes = (0, 0, 0) if tree is not None else (None, None, None)
        rows.append((path, depth, *sizes, flops.flops if flops else None, flops.macs if flops else None))
    df = pd.DataFrame(rows, columns=["module", "depth", "params", "buffers", "bytes", "flops", "macs"])
    return df.astype({c: "Int64" for c in ("depth", "params", "buffers", "bytes", "flops", "macs")})


# ---------------------------------------------------------------------------------------------- running


class _OpTally:
    def __init__(self, category: str) -> None:
        self.category = category
        self.calls = 0
        self.modules: set[str] = set()

    def result(self, op: str) -> UnsupportedOp:
        return UnsupportedOp(op, self.category, self.calls, sorted(self.modules))


class _OpRecorder(TorchDispatchMode):
    """Entered below FlopCounterMode, so it sees the ops the counter executes after its decompositions."""

    def __init__(self, registry: Any, tracker: ModuleTracker, root: str) -> None:
        super().__init__()
        self.registry = registry
        self.tracker = tracker
        self.root = root
        self.ops: dict[str, _OpTally] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet not in self.registry and func.namespace != "prim" and not _is_data_movement(func):
            tally = self.ops.setdefault(str(packet), _OpTally(_category(func)))
            tally.calls += 1
            innermost = max(self.tracker.parents, key=lambda k: (k != "Global", k.count(".")))
            path = _module_path(innermost, self.root)
            if path is not None:
                tally.modules.add(path)
        return func(*args, **(kwargs or {}))


def _run(model: nn.Module, inputs: Sequence[InputSpec], device: torch.device):
    """One counted forward; returns FlopCounterMode's counts and the tallies of ops without a formula."""
    generator = torch.Generator().manual_seed(0)
    args = tuple(spec.make(device, generator) for spec in inputs if not spec.name)
    kwargs = {spec.name: spec.make(device, generator) for spec in inputs if spec.name}
    tracker = ModuleTracker()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    recorder = _OpRecorder(counter.flop_registry, tracker, type(model).__name__)
    if device.type == "meta" and not _all_meta(model):
        named = chain(model.named_parameters(), model.named_buffers())
        states = {n: torch.empty_like(t, device="meta") for n, t in named}
        call = lambda: torch.func.functional_call(model, states, args, kwargs)  # noqa: E731 - weights untouched
    else:
        call = lambda: model(*args, **kwargs)  # noqa: E731
    with _eval_mode(model), torch.no_grad(), _unfused_kernels(), tracker, recorder, counter:
        call()
    return counter.get_flop_counts(), recorder.ops


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def _unfused_kernels() -> Iterator[None]:
    """Fused CPU kernels (mkldnn RNN, the MHA fast path) hide their matmuls from the counter: turn them off."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*oneDNN.*")  # a TF32 note torch prints on every toggle
            with torch.backends.mkldnn.flags(enabled=False):
                yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _report(
    model: nn.Module, inputs: list[InputSpec], device: str, counts: dict, ops: dict, notes: list[str]
) -> FlopReport:
    total = sum(counts.get("Global", {}).values())
    unsupported = [ops[k].result(k) for k in sorted(ops)]
    return FlopReport(type(model).__name__, inputs, device, total, _module_flops(model, counts), unsupported, notes)


def _module_flops(model: nn.Module, counts: dict[str, dict[Any, int]]) -> list[ModuleFlops]:
    root = type(model).__name__
    by_path: dict[str, dict[str, int]] = {}
    for key, ops in counts.items():
        path = _module_path(key, root)
        if path is not None:
            by_path[path] = {str(op): n for op, n in sorted(ops.items(), key=lambda kv: str(kv[0]))}
    paths = [p for p, _ in model.named_modules()]
    paths += sorted(set(by_path) - set(paths))  # a shared module the tracker named by another path
    flops: dict[str, int] = {}
    children_sum: dict[str, int] = {}
    for path in reversed(paths):  # children before parents
        flops[path] = sum(by_path[path].values()) if path in by_path else children_sum.get(path, 0)
        if path:
            parent = path.rpartition(".")[0]
            children_sum[parent] = children_sum.get(parent, 0) + flops[path]
    if "Global" in counts:
        flops[""] = sum(counts["Global"].values())
        by_path[""] = {str(op): n for op, n in sorted(counts["Global"].items(), key=lambda kv: str(kv[0]))}
    return [ModuleFlops(p, flops[p], by_path.get(p, {})) for p in paths]


def _module_path(key: str, root: str) -> str | None:
    """ModuleTracker's ``Root.a.b`` → ``a.b``, ``Root`` → ``""``; ``Global`` and stray modules → None."""
    if key == root:
        return ""
    if key.startswith(root + "."):
        return key[len(root) + 1:]
    return None


def _merged_order(first: list[str], second: list[str]) -> list[str]:
    """Module paths of both lists as one tree, parents before children, ``first``'s order winning."""
    children: dict[str, list[str]] = {}
    seen: set[str] = set()

    def add(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        if path:
            parent = path.rpartition(".")[0]
            add(parent)
            children.setdefault(parent, []).append(path)

    for path in chain([""], first, second):
        add(path)

    def walk(path: str) -> Iterator[str]:
        yield path
        for child in children.get(path, []):
            yield from walk(child)

    return list(walk("")) if (first or second) else []


def _is_data_movement(func: Any) -> bool:
    return func.is_view or func.overloadpacket.__name__ in _DATA_MOVEMENT_OPS


def _category(func: Any) -> str:
    if torch.Tag.pointwise in func.tags:
        return OpCategory.POINTWISE.value
    if torch.Tag.reduction in func.tags:
        return OpCategory.REDUCTION.value
    return OpCategory.OTHER.value


def _all_meta(model: nn.Module) -> bool:
    return all(t.is_meta for t in chain(model.parameters(), model.buffers()))


def _has_meta_tensors(model: nn.Module) -> bool:
    return any(t.is_meta for t in chain(model.parameters(), model.buffers()))


def _model_device(model: nn.Module) -> torch.device:
    first = next(chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _as_specs(inputs: Any) -> list[InputSpec]:
    if isinstance(inputs, InputSpec):
        return [inputs]
    items = list(inputs)
    if items and all(isinstance(d, int) for d in items):
        return [InputSpec(tuple(items))]
    specs = [i if isinstance(i, InputSpec) else InputSpec(tuple(int(d) for d in i)) for i in items]
    if not specs:
        raise UsageError("count_flops needs at least one input shape, e.g. InputSpec((1, 3, 32, 32))")
    return specs


def _parse_shape(text: str) -> tuple[int, ...]:
    """``1,3,32,32``, ``(1, 3, 32, 32)`` or ``1x3x32x32``; every size positive."""
    body = str(text).strip().strip("()[]")
    shape = tuple(int(d) for d in re.findall(r"\d+", body)) if _SHAPE.fullmatch(body) else ()
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape {text!r}: expected positive sizes separated by commas, like 1,3,32,32")
    return shape


def _parse_dtype(text: str) -> str:
    name = str(text).strip().removeprefix("torch.")
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise UsageError(f"--input-dtype {text!r}: not a torch dtype; use e.g. float32, bfloat16 or int64")
    return name


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("…" if len(text) > 300 else "")
