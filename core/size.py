"""Size accounting from the checkpoint alone: a module tree of parameter counts, buffer counts and bytes by dtype,
and a training-memory estimate.

Every prefix of the dotted tensor names is a node (``""`` is the whole model); a node's figures are the sum of its
own tensors and its children, so the root equals the sum of the tensors (the leaves). Tensors viewing the same
data (``tied_to`` names the first of them) are counted once, at the first of them in the tree; the others are
listed under their module, counted in ``tied`` and never in the figures. A tie to a tensor of another group
(``"model/wte.weight"``) does not make a tensor uncounted: each group's tree counts its own data.

Counts are in elements ("parameters" = number of scalar parameters, as in ``sum(p.numel())``), bytes are exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from ckptboard.core.errors import UsageError
from ckptboard.core.records import OptimizerKind, OptimizerState, TensorKind, Trainable

__all__ = [
    "TensorEntry",
    "SizeNode",
    "OptimizerKind",
    "TrainingMemory",
    "size_tree",
    "size_tree_from_frame",
    "training_memory",
    "dtype_itemsize",
]


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the size tree sees it (a leaf)."""

    name: str
    kind: str  # TensorKind value
    trainable: str  # Trainable value
    dtype: str
    numel: int
    nbytes: int
    tied_to: str | None = None
    counted: bool = True  # False when an earlier tensor of the same tree holds the same data

    @property
    def module(self) -> str:
        return self.name.rpartition(".")[0]


@dataclass
class SizeNode:
    """One module path: its own tensors, its child modules and the sums over both."""

    module: str
    trainable: int = 0
    frozen: int = 0
    unknown: int = 0  # parameters whose trainability the checkpoint does not tell
    buffers: int = 0  # buffer elements
    parameter_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    buffer_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    tied: int = 0  # tensors under this node left uncounted because they view a counted tensor
    tensors: list[TensorEntry] = field(default_factory=list)  # own tensors, in input order
    children: list[SizeNode] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return 0 if not self.module else self.module.count(".") + 1

    @property
    def parameters(self) -> int:
        return self.trainable + self.frozen + self.unknown

    @property
    def parameter_bytes(self) -> int:
        return sum(self.parameter_bytes_by_dtype.values())

    @property
    def buffer_bytes(self) -> int:
        return sum(self.buffer_bytes_by_dtype.values())

    @property
    def bytes(self) -> int:
        return self.parameter_bytes + self.buffer_bytes

    @property
    def bytes_by_dtype(self) -> dict[str, int]:
        return _sorted_dict(_add_counts(dict(self.parameter_bytes_by_dtype), self.buffer_bytes_by_dtype))

    def walk(self, max_depth: int | None = None) -> Iterator[SizeNode]:
        """This node and its descendants, parents first, down to ``max_depth`` (``None``: all)."""
        if max_depth is not None and self.depth > max_depth:
            return
        yield self
        for child in self.children:
            yield from child.walk(max_depth)

    def iter_tensors(self) -> Iterator[TensorEntry]:
        """Every tensor under this node (counted and tied)."""
        for node in self.walk():
            yield from node.tensors

    def find(self, module: str) -> SizeNode | None:
        """The node at dotted path ``module`` under this one, or ``None``."""
        return next((n for n in self.walk() if n.module == module), None)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one module: see the ``ckptboard size --json`` contract."""
        return {
            "module": self.module,
            "depth": self.depth,
            "parameters": self.parameters,
            "trainable": self.trainable,
            "frozen": self.frozen,
            "unknown": self.unknown,
            "buffers": self.buffers,
            "bytes": self.bytes,
            "parameter_bytes": self.parameter_bytes,
            "buffer_bytes": self.buffer_bytes,
            "bytes_by_dtype": self.bytes_by_dtype,
            "tied": self.tied,
        }

    def _add(self, entry: TensorEntry) -> None:
        if not entry.counted:
            self.tied += 1
        elif entry.kind == TensorKind.BUFFER:
            self.buffers += entry.numel
            _add_counts(self.buffer_bytes_by_dtype, {entry.dtype: entry.nbytes})
        else:
            attr = {Trainable.TRUE: "trainable", Trainable.FALSE: "frozen"}.get(entry.trainable, "unknown")
            setattr(self, attr, getattr(self, attr) + entry.numel)
            _add_counts(self.parameter_bytes_by_dtype, {entry.dtype: entry.nbytes})


def size_tree(records: Iterable[Any]) -> SizeNode:
    """The module tree of TensorInfo-like records (``name, kind, trainable, dtype, numel, nbytes, tied_to``).

    All records must come from one group of one checkpoint: two state_dicts (model and EMA) would collide.
    """
    entries: list[TensorEntry] = []
    groups: set[str] = set()
    for r in records:
        groups.add(str(getattr(r, "group", "") or ""))
        entries.append(_entry(r.name, r.kind, r.trainable, r.dtype, r.numel, r.nbytes, r.tied_to))
    _one_group(groups)
    return _build(entries)


def size_tree_from_frame(df: Any, group: str | None = None) -> SizeNode:
    """The module tree of rows of the tensors table (core/schema.py TENSOR_COLUMNS) of one checkpoint.

    ``group`` picks one state_dict when the rows hold several (model and EMA); with one, it may be left out.
    """
    missing = [c for c in ("name", "kind", "trainable", "dtype", "numel", "nbytes", "tied_to") if c not in df.columns]
    if missing:
        raise UsageError(f"tensors table lacks column(s) {', '.join(missing)}; pass rows of the stats cache's tensors")
    if "checkpoint" in df.columns and df["checkpoint"].nunique(dropna=False) > 1:
        raise UsageError(
            f"tensors table holds {df['checkpoint'].nunique(dropna=False)} checkpoints; pass the rows of one checkpoint"
        )
    if "group" in df.columns:
        if group is not None:
            df = df[df["group"].fillna("").astype(str) == group]
        _one_group(set(df["group"].fillna("").astype(str)))
    cols = ["name", "kind", "trainable", "dtype", "numel", "nbytes", "tied_to"]
    return _build([_entry(*row) for row in df[cols].itertuples(index=False, name=None)])


def dtype_itemsize(dtype: str) -> int:
    """Bytes per element of a torch dtype written without ``torch.`` (``bfloat16`` → 2)."""
    import torch  # here, not at the top: the app draws size trees without importing torch

    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise UsageError(f"{dtype!r} is not a torch dtype; use names like 'float32', 'bfloat16' or 'int64'")
    return value.itemsize


# ---------------------------------------------------------------------------------------------- training memory


# float32 states per trainable parameter element.
_STATES_PER_PARAMETER = {
    OptimizerKind.ADAM: 2,
    OptimizerKind.ADAMW: 2,
    OptimizerKind.SGD_MOMENTUM: 1,
    OptimizerKind.SGD: 0,
}
_STATE_NAMES = {
    OptimizerKind.ADAM: "exp_avg and exp_avg_sq",
    OptimizerKind.ADAMW: "exp_avg and exp_avg_sq",
    OptimizerKind.SGD_MOMENTUM: "momentum_buffer",
    OptimizerKind.SGD: "no state",
}


@dataclass
class TrainingMemory:
    """An ESTIMATE of the memory training needs for weights, gradients and optimizer state, in bytes by dtype."""

    optimizer: str  # OptimizerKind value
    optimizer_source: str  # "assumed" or "checkpoint: <key paths>"
    weights: dict[str, int]
    gradients: dict[str, int]
    optimizer_state: dict[str, int]
    assumptions: list[str]

    @property
    def total_by_dtype(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for part in (self.weights, self.gradients, self.optimizer_state):
            _add_counts(total, part)
        return _sorted_dict(total)

    @property
    def total_bytes(self) -> int:
        return sum(self.total_by_dtype.values())

    def to_json(self) -> dict[str, Any]:
        """The ``training_memory`` object of ``ckptboard size --json``."""
        return {
            "is_estimate": True,
            "optimizer": str(self.optimizer),
            "optimizer_source": self.optimizer_source,
            "weights_bytes": self.weights,
            "gradients_bytes": self.gradients,
            "optimizer_state_bytes": self.optimizer_state,
            "total_bytes_by_dtype": self.total_by_dtype,
            "total_bytes": self.total_bytes,
            "assumptions": list(self.assumptions),
        }


def training_memory(
    tree: SizeNode,
    optimizer: OptimizerKind | str | None = None,
    optimizer_states: Sequence[OptimizerState] = (),
) -> TrainingMemory:
    """Estimate weights + gradients + optimizer state for the tensors of ``tree``.

    ``optimizer=None`` uses the checkpoint's own optimizer state when ``optimizer_states`` holds any, else Adam.
    """
    kind = _optimizer_kind(optimizer, optimizer_states)
    weights: dict[str, int] = {}
    gradients: dict[str, int] = {}
    n_grad = 0
    n_unknown = 0
    for entry in tree.iter_tensors():
        if not entry.counted:
            continue
        _add_counts(weights, {entry.dtype: entry.nbytes})
        if entry.kind != TensorKind.BUFFER and entry.trainable != Trainable.FALSE:
            _add_counts(gradients, {entry.dtype: entry.nbytes})
            n_grad += entry.numel
            n_unknown += entry.numel if entry.trainable != Trainable.TRUE else 0
    assumptions = [
        "an ESTIMATE: activations, temporary buffers, the allocator's overhead and the CUDA context are excluded",
        "weights: every parameter and buffer once (tied tensors counted once), in its stored dtype",
        "gradients: one per trainable parameter element, in the parameter's dtype; buffers have none",
        "no float32 master copy of low-precision weights (mixed-precision trainers may keep one)",
    ]
    if n_unknown:
        assumptions.append(
            f"{n_unknown:,} parameter elements of unknown trainability are counted as trainable "
            "(give --model SPEC so that requires_grad decides)"
        )
    if kind == OptimizerKind.CHECKPOINT:
        state = _checkpoint_state_bytes(optimizer_states)
        paths = ", ".join(repr(o.key_path) for o in optimizer_states)
        source = f"checkpoint: {paths}"
        assumptions.append(f"optimizer state: the bytes of the state stored in the checkpoint at {paths}, as stored")
    else:
        per = _STATES_PER_PARAMETER[kind]
        state = {"float32": per * 4 * n_grad} if per else {}
        source = "assumed"
        assumptions.append(
            f"optimizer {kind}: {per} float32 state(s) ({_STATE_NAMES[kind]}) per trainable parameter element"
        )
    return TrainingMemory(
        str(kind), source, _sorted_dict(weights), _sorted_dict(gradients), _sorted_dict(state), assumptions
    )


# ---------------------------------------------------------------------------------------------- helpers


def _entry(name, kind, trainable, dtype, numel, nbytes, tied_to) -> TensorEntry:
    return TensorEntry(
        name=str(name),
        kind=TensorKind(str(kind)).value,
        trainable=_trainable(trainable),
        dtype=str(dtype).removeprefix("torch."),
        numel=int(numel),
        nbytes=int(nbytes),
        tied_to=None if _is_missing(tied_to) else str(tied_to),
    )


def _trainable(value: Any) -> str:
    """Trainable from a record (``"true"``) or a cache row (``True``, ``None``/NaN for unknown)."""
    if value is True or str(value).lower() == "true":
        return Trainable.TRUE.value
    if value is False or str(value).lower() == "false":
        return Trainable.FALSE.value
    return Trainable.UNKNOWN.value


def _is_missing(value: Any) -> bool:
    """None, ``""``, NaN or pd.NA: how an untied tensor's ``tied_to`` looks in a record or a cache row."""
    if value is None or isinstance(value, str):
        return not value
    return bool(pd.isna(value))


def _one_group(groups: set[str]) -> None:
    if len(groups) > 1:
        names = ", ".join(repr(g) for g in sorted(groups))
        raise UsageError(f"tensors come from several state_dicts ({names}); pick one group for the size tree")


def _build(entries: Sequence[TensorEntry]) -> SizeNode:
    nodes: dict[str, SizeNode] = {"": SizeNode("")}
    seen: set[str] = set()
    for entry in entries:
        # Tensors sharing data share a key: the first tensor's name (``tied_to``, possibly in another group).
        # The first of them in this tree is counted, so a group whose data another group holds still counts once.
        key = entry.tied_to or entry.name
        entry = replace(entry, counted=key not in seen)
        seen.add(key)
        node = _node(nodes, entry.module)
        node.tensors.append(entry)
        path: str | None = entry.module
        while path is not None:
            nodes[path]._add(entry)
            path = _parent(path)
    return nodes[""]


def _node(nodes: dict[str, SizeNode], module: str) -> SizeNode:
    if module not in nodes:
        node = SizeNode(module)
        nodes[module] = node
        _node(nodes, _parent(module) or "").children.append(node)
    return nodes[module]


def _parent(module: str) -> str | None:
    return None if not module else module.rpartition(".")[0]


def _optimizer_kind(optimizer: OptimizerKind | str | None, states: Sequence[OptimizerState]) -> OptimizerKind:
    if optimizer is None:
        return OptimizerKind.CHECKPOINT if states else OptimizerKind.ADAM
    try:
        kind = OptimizerKind(str(optimizer))
    except ValueError:
        choices = ", ".join(k.value for k in OptimizerKind)
        raise UsageError(f"optimizer {optimizer!r} is not one of {choices}") from None
    if kind == OptimizerKind.CHECKPOINT and not states:
        raise UsageError("optimizer 'checkpoint' asked for, but the checkpoint holds no optimizer state")
    return kind


def _checkpoint_state_bytes(states: Sequence[OptimizerState]) -> dict[str, int]:
    """Bytes by dtype of the stored state; a state without shapes falls back to its total under ``unknown``."""
    out: dict[str, int] = {}
    for opt in states:
        by_dtype: dict[str, int] = {}
        for p in opt.params:
            for name, shape in p.state_shapes.items():
                dtype = p.state_dtypes.get(name, "float32")
                _add_counts(by_dtype, {dtype: math.prod(shape) * dtype_itemsize(dtype)})
        if not by_dtype and opt.state_nbytes:
            by_dtype = {"unknown": opt.state_nbytes}
        _add_counts(out, by_dtype)
    return out


def _add_counts(into: dict[str, int], more: Mapping[str, int]) -> dict[str, int]:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value
    return into


def _sorted_dict(d: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(d.items()))
