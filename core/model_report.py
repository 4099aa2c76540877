"""Matching a checkpoint's names to a model's, and the report of what does not match.

The model's ``named_parameters()``/``named_buffers()`` are the truth. Checkpoint names are matched to the
model's ``state_dict()`` keys after stripping one shared prefix from the checkpoint side (Lightning's ``model.``)
or adding one on the model side (a wrapper around the saved network), whichever matches most names.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ckptboard.core.records import TensorGroup

__all__ = ["ShapeMismatch", "ModelReport", "ModelIndex", "GroupMatch", "index_model", "match_group", "build_report"]


@dataclass
class ShapeMismatch:
    name: str  # the model's key
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]


@dataclass
class ModelReport:
    """How a checkpoint group lines up with the model; lists are sorted names (model keys unless noted)."""

    group: str  # the checkpoint group that matched the model best
    checkpoint_prefix: str = ""  # stripped from checkpoint names to reach model keys
    model_prefix: str = ""  # added to checkpoint names to reach model keys
    matched: int = 0
    missing_keys: list[str] = field(default_factory=list)  # in model.state_dict(), absent from the group
    unexpected_keys: list[str] = field(default_factory=list)  # checkpoint names the model does not have
    shape_mismatches: list[ShapeMismatch] = field(default_factory=list)
    non_persistent_buffers: list[str] = field(default_factory=list)  # absent from any checkpoint by design
    plain_tensor_attributes: list[str] = field(default_factory=list)  # "module.attr": never saved, ignore .to()
    other_groups: list[str] = field(default_factory=list)  # further groups whose tensors the model classified
    trainable_disagreements: list[str] = field(default_factory=list)  # requires_grad vs the optimizer's verdict
    tied_keys: list[str] = field(default_factory=list)  # "key = saved key": absent because tied to a saved one
    ignored_on_save: list[str] = field(default_factory=list)  # the model's own _keys_to_ignore_on_save, absent

    def to_json(self) -> dict:
        """JSON form: the fields above; shapes as lists."""
        out = asdict(self)
        out["shape_mismatches"] = [
            {"name": m.name, "checkpoint_shape": list(m.checkpoint_shape), "model_shape": list(m.model_shape)}
            for m in self.shape_mismatches
        ]
        return out


@dataclass
class ModelIndex:
    """What the model declares, by name: shapes and ``requires_grad`` of parameters, shapes of buffers."""

    params: dict[str, tuple[tuple[int, ...], bool]]
    buffers: dict[str, tuple[int, ...]]
    state_keys: dict[str, tuple[int, ...]]  # model.state_dict(): persistent buffers and parameters
    plain_tensor_attributes: list[str]
    ties: dict[str, list[str]] = field(default_factory=dict)  # key -> the other keys sharing its tensor
    ignored_on_save: set[str] = field(default_factory=set)  # keys matching the model's _keys_to_ignore_on_save


@dataclass
class GroupMatch:
    """Checkpoint display name -> model key, for one group."""

    group: TensorGroup
    checkpoint_prefix: str
    model_prefix: str
    mapping: dict[str, str]


def index_model(model: nn.Module, rename: Callable[[str], str] | None = None) -> ModelIndex:
    """Read a model's parameter/buffer names once (tied names included) and its unregistered tensor attributes.

    ``rename``: model key -> the key its checkpoints use (transformers' saved names), applied to every name.
    """
    rename = rename or (lambda k: k)
    params = {
        rename(n): (tuple(p.shape), bool(p.requires_grad)) for n, p in model.named_parameters(remove_duplicate=False)
    }
    buffers = {rename(n): tuple(b.shape) for n, b in model.named_buffers(remove_duplicate=False)}
    state = {rename(k): v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}
    by_tensor: dict[int, list[str]] = {}
    for k, v in state.items():
        by_tensor.setdefault(id(v), []).append(k)
    ties = {k: [o for o in same if o != k] for same in by_tensor.values() if len(same) > 1 for k in same}
    state_keys = {k: tuple(v.shape) for k, v in state.items()}
    # transformers models name state_dict keys that save_pretrained leaves out (sinusoidal position tables).
    patterns = [p for p in getattr(model, "_keys_to_ignore_on_save", None) or () if isinstance(p, str)]
    ignored = {k for k in state_keys if any(re.search(p, k) for p in patterns)}
    return ModelIndex(params, buffers, state_keys, _plain_tensor_attributes(model), ties, ignored)


def match_group(group: TensorGroup, index: ModelIndex) -> GroupMatch:
    """Map the group's names onto model keys through the (prefix) pairing that matches most names."""
    keys = index.state_keys.keys() | index.params.keys() | index.buffers.keys()
    by_suffix: dict[str, list[str]] = {}  # model key without a leading module path -> that path
    for key in keys:
        parts = key.split(".")
        for i in range(1, len(parts)):
            by_suffix.setdefault(".".join(parts[i:]), []).append(".".join(parts[:i]) + ".")
    votes: Counter[tuple[str, str]] = Counter()
    for info in group.tensors:
        pairs = {("", mp) for mp in by_suffix.get(info.name, ())}
        if info.name in keys:
            pairs.add(("", ""))
        parts = info.name.split(".")
        pairs.update((".".join(parts[:i]) + ".", "") for i in range(1, len(parts)) if ".".join(parts[i:]) in keys)
        votes.update(pairs)
    if not votes:
        return GroupMatch(group, "", "", {})
    # Most names first; on a tie the pairing that changes the fewest characters.
    (cp, mp), _ = max(votes.items(), key=lambda kv: (kv[1], -len(kv[0][0]) - len(kv[0][1])))
    mapping = {}
    for info in group.tensors:
        if info.name.startswith(cp) and (key := mp + info.name[len(cp):]) in keys:
            mapping[info.name] = key
    return GroupMatch(group, cp, mp, mapping)


def build_report(match: GroupMatch, index: ModelIndex, other_groups: list[str]) -> ModelReport:
    """The report for the best-matching group."""
    shapes = {info.name: info.shape for info in match.group.tensors}
    model_shapes = {**index.state_keys, **index.buffers, **{n: s for n, (s, _) in index.params.items()}}
    present = set(match.mapping.values())

    def tied_present(key: str) -> str | None:
        """A saved key sharing ``key``'s tensor (safetensors and transformers save tied weights once)."""
        return next((o for o in index.ties.get(key, ()) if o in present), None)

    mismatches = [
        ShapeMismatch(key, tuple(shapes[name]), model_shapes[key])
        for name, key in match.mapping.items()
        if tuple(shapes[name]) != model_shapes[key]
    ]
    return ModelReport(
        group=match.group.name,
        checkpoint_prefix=match.checkpoint_prefix,
        model_prefix=match.model_prefix,
        matched=len(match.mapping),
        missing_keys=sorted(
            k for k in index.state_keys if k not in present and not tied_present(k) and k not in index.ignored_on_save
        ),
        unexpected_keys=sorted(n for n in shapes if n not in match.mapping),
        shape_mismatches=sorted(mismatches, key=lambda m: m.name),
        non_persistent_buffers=sorted(b for b in index.buffers if b not in index.state_keys),
        plain_tensor_attributes=list(index.plain_tensor_attributes),
        other_groups=sorted(other_groups),
        ignored_on_save=sorted(k for k in index.ignored_on_save if k not in present),
        tied_keys=sorted(f"{k} = {tied_present(k)}" for k in index.state_keys if k not in present and tied_present(k)),
    )


def _plain_tensor_attributes(model: nn.Module) -> list[str]:
    """Tensors set as plain module attributes: neither parameter nor buffer, so never saved nor moved."""
    found = []
    for mod_name, module in model.named_modules(remove_duplicate=True):
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                found.append(f"{mod_name}.{attr}" if mod_name else attr)
    return sorted(found)
