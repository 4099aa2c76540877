"""One checkpoint group measured for ``ckptboard size`` and ``ckptboard flops --checkpoint``: its size tree, the
training-memory estimate and the shape-based FLOP estimate, from the file alone (a model only sharpens names and
trainable/frozen).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from ckptboard.core.errors import UsageError
from ckptboard.core.flop_estimate import FlopEstimate, estimate_flops
from ckptboard.core.size import OptimizerKind, SizeNode, TrainingMemory, size_tree, training_memory

__all__ = ["CheckpointSize", "load_checkpoint_size", "check_depth"]


@dataclass
class CheckpointSize:
    """What ``ckptboard size`` measures in one checkpoint group."""

    path: str
    group: str
    tree: SizeNode
    memory: TrainingMemory
    estimate: FlopEstimate
    notes: list[str] = field(default_factory=list)

    def to_json(self, max_depth: int | None = None) -> dict[str, Any]:
        """The ``ckptboard size --json`` object (documented in ``dashboard/commands/size.py``)."""
        total = {k: v for k, v in self.tree.to_json().items() if k not in ("module", "depth")}
        return {
            "path": self.path,
            "group": self.group,
            "total": total,
            "modules": [n.to_json() for n in self.tree.walk(max_depth)],
            "training_memory": self.memory.to_json(),
            "estimate": self.estimate.to_json(),
            "notes": list(self.notes),
        }


def load_checkpoint_size(
    path: str,
    *,
    model: nn.Module | None = None,
    trust: bool = False,
    group: str | None = None,
    optimizer: str | None = None,
) -> CheckpointSize:
    """Open ``path``, classify its tensors (with ``model`` if given) and measure one group, named as in the model."""
    from ckptboard.core.classify import classify
    from ckptboard.core.reader import open_checkpoint

    with open_checkpoint(path, trust=trust) as ckpt:
        result = classify(ckpt, model, trust=trust)
        report, model = result.report, model or result.model
        groups = {g.name: g for g in ckpt.groups}
        chosen = _choose_group(path, groups, group, report.group if report is not None else None)
        tensors = list(groups[chosen].tensors)
        if report is not None and report.group == chosen:
            tensors = _model_names(tensors, report.checkpoint_prefix, report.model_prefix)
        others = sorted(set(groups) - {chosen})
        notes = list(getattr(ckpt, "notes", []))
        if others:
            notes.append(f"other state_dicts in the file: {', '.join(map(repr, others))} (measure one with --group)")
        if optimizer == OptimizerKind.CHECKPOINT and not ckpt.optimizers:
            raise UsageError(f"{path}: --optimizer checkpoint, but the file holds no optimizer state; "
                             "pick adam, adamw, sgd-momentum or sgd")
        tree = size_tree(tensors)
        return CheckpointSize(
            path=str(path),
            group=chosen,
            tree=tree,
            memory=training_memory(tree, optimizer, list(ckpt.optimizers)),
            estimate=estimate_flops(tensors, model, _tied_pairs(report), _config_ties_embeddings(path, model)),
            notes=notes,
        )


def check_depth(depth: int | None) -> None:
    """``--depth`` is 0 (the root only) or more, or absent (every depth)."""
    if depth is not None and depth < 0:
        raise UsageError(f"--depth {depth}: must be 0 (the whole model only) or more")


def _config_ties_embeddings(path: str, model: nn.Module | None) -> bool:
    """No model (transformers missing), but a config.json beside the weights saying the output head is tied."""
    from ckptboard.core.errors import ModelSpecError
    from ckptboard.core.hf_model import find_config, read_config  # no transformers needed to read a config

    if model is not None:
        return False
    config, peft_base = find_config(Path(path))
    if config is None or peft_base:
        return False
    try:
        return read_config(config).get("tie_word_embeddings") is True
    except ModelSpecError:
        return False


def _tied_pairs(report: Any) -> list[tuple[str, str]]:
    """The model report's ``"head = saved"`` tied keys as pairs."""
    return [tuple(t.split(" = ", 1)) for t in getattr(report, "tied_keys", None) or []]


def _choose_group(path: str, groups: dict[str, Any], asked: str | None, matched: str | None) -> str:
    if not groups:
        raise UsageError(f"{path}: holds no model tensors to measure")
    if asked is not None:
        if asked not in groups:
            raise UsageError(f"{path}: no state_dict {asked!r}; it holds {', '.join(map(repr, sorted(groups)))}")
        return asked
    if matched is not None and matched in groups:
        return matched
    return max(groups, key=lambda g: sum(t.nbytes for t in groups[g].tensors))


def _model_names(tensors: list[Any], checkpoint_prefix: str, model_prefix: str) -> list[Any]:
    """Checkpoint names rewritten into the model's namespace, so the tree lines up with ``named_modules()``."""
    if not checkpoint_prefix and not model_prefix:
        return tensors
    return [
        replace(t, name=model_prefix + t.name.removeprefix(checkpoint_prefix)) if t.name.startswith(checkpoint_prefix)
        else t
        for t in tensors
    ]
