"""Split an unpickled checkpoint into state_dict groups, optimizer states and a JSON-safe metadata summary.

Found by content, not by key names: a *group* is a mapping of str to tensors (``*_extra_state`` entries may be
anything) or a non-empty list of tensors, named by its key path joined with ``/`` (``""`` at the root). An
*optimizer state* is a mapping with ``state`` and ``param_groups``. Everything else is metadata. At the root, the
Lightning entries ``callbacks``, ``loops`` and ``lr_schedulers`` are metadata whatever they hold (a callback's
``best_k_models`` maps paths to 0-d tensors and is no model). Tensors count as :class:`LazyTensor` records or real
``torch.Tensor`` objects; a real ``nn.Module`` (trusted loading only) is a group through its ``state_dict()``.

Metadata summary: numbers, strings, bools and None as they are (non-finite floats as ``"nan"``/``"inf"``);
mappings with str keys; lists and tuples of up to 32 items then ``"… N more"``; strings cut at 500 characters;
0-d numeric tensors as their value; other tensors as ``"tensor float32[3, 4]"``; skipped objects as
``{"__skipped__": "argparse.Namespace", "state": …}``; nesting below 8 levels as ``"…"``.

Budget: a pickle can reference one object many times (memo references), so that a few KB describe a tree of
billions of nodes. Walking an object the first time is free (its size is paid by the file); walking it again costs
its length, and more than 200,000 such units end the walk with :class:`WalkBudgetError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ckptboard.core.records import OptimizerParam, OptimizerState
from ckptboard.core.formats.safe_unpickle import LazyTensor, Skipped, dtype_name, short_repr

__all__ = [
    "Contents", "split_contents", "is_tensor", "tensor_shape", "tensor_dtype", "display_prefix", "WalkBudgetError",
]  # fmt: skip

_LIGHTNING_METADATA_KEYS = frozenset({"callbacks", "loops", "lr_schedulers"})
_DISPLAY_PREFIXES = ("module.", "_orig_mod.")
_MAX_ITEMS, _MAX_TEXT, _MAX_DEPTH = 32, 500, 8
_MAX_REPEATS = 200_000  # units of walking already-walked objects again (see the module docstring)


class WalkBudgetError(ValueError):
    """The object tree references the same objects so often that walking it would not end (a billion laughs)."""

ScalarReader = Callable[[Any], "int | float | bool | None"]


def is_tensor(value: Any) -> bool:
    return isinstance(value, (LazyTensor, torch.Tensor))


def tensor_shape(value: LazyTensor | torch.Tensor) -> tuple[int, ...]:
    return tuple(value.shape)


def tensor_dtype(value: LazyTensor | torch.Tensor) -> str:
    return dtype_name(value.dtype)


def display_prefix(names: list[str]) -> str:
    """The ``module.``/``_orig_mod.`` prefixes (repeated, in any order) that every name carries."""
    prefix = ""
    while names:
        step = next((p for p in _DISPLAY_PREFIXES if all(n.startswith(prefix + p) for n in names)), None)
        if step is None or any(len(n) == len(prefix + step) for n in names):
            break
        prefix += step
    return prefix


@dataclass
class Contents:
    """What :func:`split_contents` found."""

    groups: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # key path -> {raw name: tensor}
    optimizers: list[OptimizerState] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    modules: list[torch.nn.Module] = field(default_factory=list)
    hidden_tensors: int = 0  # tensors reachable only inside skipped objects
    hidden_in: list[str] = field(default_factory=list)  # the skipped globals that hold them


def split_contents(root: Any, read_scalar: ScalarReader | None = None) -> Contents:
    """Groups, optimizers and metadata of ``root``; ``read_scalar`` turns a 0-d tensor into a number."""
    walker = _Walker(read_scalar or (lambda value: None))
    if is_tensor(root):
        walker.out.groups.append(("", {"tensor": root}))
    else:
        summary = walker.walk(root, (), find=True)
        if isinstance(summary, dict):
            walker.out.metadata = summary
        elif summary is not _OMIT:
            walker.out.metadata = {"object": summary}
    return walker.out


_OMIT = object()  # a group or optimizer: shown elsewhere, not in the metadata


def _is_group_mapping(value: Mapping) -> bool:
    tensors = 0
    for key, item in value.items():
        if not isinstance(key, str):
            return False
        if is_tensor(item):
            tensors += 1
        elif not key.endswith("_extra_state"):
            return False
    return tensors > 0


def _is_optimizer(value: Mapping) -> bool:
    groups = value.get("param_groups")
    return (
        isinstance(value.get("state"), Mapping)
        and isinstance(groups, list)
        and all(isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups)
    )


class _Walker:
    def __init__(self, read_scalar: ScalarReader, parent: _Walker | None = None):
        self.read_scalar = read_scalar
        self.out = Contents()
        self._active: set[int] = set()  # containers on the current path (pickles may hold cycles)
        # containers and placeholders walked at least once, and the repeat units paid: shared with the parent
        self._seen: set[int] = parent._seen if parent else set()
        self._paid: list[int] = parent._paid if parent else [0]

    def _visit(self, value: Any) -> bool:
        """Record a visit of ``value``; True on its first. Repeat visits are paid for from the budget."""
        if id(value) not in self._seen:
            self._seen.add(id(value))
            return True
        self._pay(1 + (len(value) if isinstance(value, (Mapping, list, tuple)) else 0))
        return False

    def _pay(self, units: int) -> None:
        self._paid[0] += units
        if self._paid[0] > _MAX_REPEATS:
            raise WalkBudgetError(
                f"the pickle references the same objects more than {_MAX_REPEATS} times over (a billion-laughs "
                "structure): not walked"
            )

    def walk(self, value: Any, path: tuple[str, ...], find: bool, depth: int = 0) -> Any:
        if isinstance(value, torch.nn.Module) and find:
            self.out.modules.append(value)
            self.out.groups.append(("/".join(path), value.state_dict()))
            return _OMIT
        if is_tensor(value):
            return self._tensor_summary(value)
        if isinstance(value, Skipped):
            return self._skipped(value, depth)
        if isinstance(value, (Mapping, list, tuple)):
            if id(value) in self._active or depth >= _MAX_DEPTH:
                return "…"
            self._visit(value)
            self._active.add(id(value))
            try:
                return self._container(value, path, find, depth)
            finally:
                self._active.discard(id(value))
        return _scalar_summary(value)

    def _container(self, value: Mapping | list | tuple, path: tuple[str, ...], find: bool, depth: int) -> Any:
        if isinstance(value, Mapping):
            if find and _is_optimizer(value):
                self.out.optimizers.append(self._optimizer_state("/".join(path), value))
                return _OMIT
            if find and _is_group_mapping(value):
                self.out.groups.append(("/".join(path), {k: v for k, v in value.items() if is_tensor(v)}))
                return _OMIT
            summary, omitted = {}, 0
            for key, item in value.items():
                child_find = find and not (depth == 0 and key in _LIGHTNING_METADATA_KEYS)
                child = self.walk(item, (*path, _key_text(key)), child_find, depth + 1)
                omitted += child is _OMIT
                if child is not _OMIT and len(summary) < 4 * _MAX_ITEMS:
                    summary[_key_text(key)] = child
            return _OMIT if depth and omitted == len(value) else summary
        if find and value and all(is_tensor(v) for v in value):
            self.out.groups.append(("/".join(path), {str(i): v for i, v in enumerate(value)}))
            return _OMIT
        items = [self.walk(item, (*path, str(i)), find, depth + 1) for i, item in enumerate(value)]
        if items and all(item is _OMIT for item in items):
            return _OMIT  # e.g. Lightning's optimizer_states list
        items = [item for item in items if item is not _OMIT]
        if len(items) > _MAX_ITEMS:
            items = items[:_MAX_ITEMS] + [f"… {len(items) - _MAX_ITEMS} more"]
        return items

    def _skipped(self, value: Skipped, depth: int) -> dict[str, Any]:
        hidden = _count_tensors(value) if self._visit(value) else 0  # counted once however often referenced
        if hidden:
            self.out.hidden_tensors += hidden
            if value.qualname not in self.out.hidden_in:
                self.out.hidden_in.append(value.qualname)
        summary: dict[str, Any] = {"__skipped__": value.qualname}
        for name in ("args", "kwargs", "state", "items", "appended"):
            content = getattr(value, name)
            if content:
                summary[name] = self.walk(content, (), False, depth + 1)
        return summary

    def _tensor_summary(self, value: LazyTensor | torch.Tensor) -> Any:
        shape = tensor_shape(value)
        if not shape and getattr(value, "quantizer", None) is None:
            number = self.read_scalar(value)
            if number is not None:
                return _scalar_summary(number)
        return f"tensor {tensor_dtype(value)}{list(shape)}"

    def _optimizer_state(self, key_path: str, value: Mapping) -> OptimizerState:
        state = value["state"]
        self._visit(state)
        opt = OptimizerState(key_path=key_path)
        entries_seen: set[int] = set()
        for index, group in enumerate(value["param_groups"]):
            self._visit(group["params"])  # shared lists cost their length again
            for pid in group["params"]:
                entry = state.get(pid, {}) if isinstance(pid, (int, str)) else {}
                if isinstance(entry, Mapping) and id(entry) in entries_seen:
                    self._pay(1 + len(entry))  # one state entry behind many ids
                entries_seen.add(id(entry))
                tensors = {k: v for k, v in entry.items() if is_tensor(v)} if isinstance(entry, Mapping) else {}
                opt.params.append(
                    OptimizerParam(
                        param_id=pid if isinstance(pid, (int, str)) else short_repr(pid),
                        group_index=index,
                        state_shapes={_key_text(k): tensor_shape(v) for k, v in tensors.items()},
                        state_dtypes={_key_text(k): tensor_dtype(v) for k, v in tensors.items()},
                        state_refs={_key_text(k): v for k, v in tensors.items()},
                        state_scalars=_numbers(entry),
                    )
                )
            hyper = _Walker(self.read_scalar, self).walk({k: v for k, v in group.items() if k != "params"}, (), False)
            opt.hyperparams.append(hyper)
        entries = {id(e): e for e in state.values() if isinstance(e, Mapping)}  # each entry's bytes once
        opt.state_nbytes = sum(
            t.nbytes if isinstance(t, LazyTensor) else t.numel() * t.element_size()
            for entry in entries.values()
            for t in entry.values()
            if is_tensor(t)
        )
        return opt


def _scalar_summary(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value[:_MAX_TEXT] if isinstance(value, str) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (set, frozenset)):
        return [_scalar_summary(v) for v in list(value)[:_MAX_ITEMS]]
    if isinstance(value, (complex, slice, torch.dtype, torch.device, torch.Size)):
        return str(value).removeprefix("torch.")
    return f"<{type(value).__name__}>"


def _key_text(key: Any) -> str:
    """A mapping key as metadata text: plain keys as ``str()``, anything else as a short repr (bounded)."""
    if isinstance(key, str):
        return key
    return str(key) if key is None or isinstance(key, (bool, int, float)) else short_repr(key)


def _count_tensors(root: Any) -> int:
    """Tensors reachable from ``root``, each object visited once; iterative, so any nesting depth is fine."""
    count, seen, todo = 0, set(), [root]
    while todo:
        value = todo.pop()
        if is_tensor(value):
            count += 1
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, Skipped):
            todo.extend((value.args, value.kwargs, value.state, value.items, value.appended))
        elif isinstance(value, Mapping):
            todo.extend(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            todo.extend(value)
    return count


def _numbers(entry: Any) -> dict[str, float]:
    """The plain numbers of an optimizer state entry (``step`` is an int in old torch, a 0-d tensor since 1.12)."""
    if not isinstance(entry, Mapping):
        return {}
    out = {}
    for key, value in entry.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 2**1000 else math.inf  # an int too large for a float
            if math.isfinite(number):
                out[_key_text(key)] = number
    return out
