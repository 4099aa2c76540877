"""``ckptboard size PATH``: the module tree of parameter counts, buffers and bytes, a training-memory estimate and
a shape-based FLOP estimate, from the checkpoint alone (``--model`` only sharpens trainable/frozen).

``--json`` prints one object::

    {"path": str, "group": str,                  # the state_dict measured ("" for a bare state_dict)
     "total": {<module keys below, without "module"/"depth">},
     "modules": [{"module": str,                 # dotted path, "" for the whole model, parents first
                  "depth": int,                  # 0 for "", else number of dotted parts
                  "parameters": int,             # parameter elements = trainable + frozen + unknown
                  "trainable": int, "frozen": int, "unknown": int,
                  "buffers": int,                # buffer elements
                  "bytes": int,                  # parameter_bytes + buffer_bytes
                  "parameter_bytes": int, "buffer_bytes": int,
                  "bytes_by_dtype": {dtype: int},
                  "tied": int},                  # tensors under it that view counted data (counted 0 here)
                 ...],
     "training_memory": {...},                   # TrainingMemory.to_json(): an estimate, with "assumptions"
     "estimate": {...},                          # FlopEstimate.to_json(): FLOPs from weight shapes, never counted
     "notes": [str, ...]}
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from ckptboard.core.errors import UsageError
from ckptboard.core.flop_estimate import FlopEstimate, estimate_flops
from ckptboard.core.size import OptimizerKind, SizeNode, TrainingMemory, size_tree, training_memory
from ckptboard.dashboard.figures._common import format_bytes

__all__ = [
    "CheckpointSize",
    "load_checkpoint_size",
    "check_depth",
    "format_table",
    "format_count",
    "module_label",
    "add_parser",
    "run",
]

_ROOT_LABEL = "(model)"


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
        """The ``ckptboard size --json`` object (see the module docstring)."""
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
            estimate=estimate_flops(tensors, model, _tied_pairs(report)),
            notes=notes,
        )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "size",
        help="parameters, buffers and bytes per module, and a training-memory estimate",
        description="Where a checkpoint's parameters and bytes go, per module, from the file alone.",
    )
    p.add_argument("path", metavar="PATH", help="checkpoint file (or Hugging Face folder)")
    p.add_argument("--depth", type=int, default=None, metavar="N", help="show modules down to depth N (root: 0)")
    p.add_argument("--model", metavar="SPEC", help="file.py:factory or package.module:factory (decides trainable)")
    p.add_argument("--trust", action="store_true", help="allow unpickling code (only for files you trust)")
    p.add_argument("--group", metavar="NAME", help="state_dict inside the file (default: the model's, else largest)")
    p.add_argument(
        "--optimizer", choices=[k.value for k in OptimizerKind], default=None,
        help="optimizer for the memory estimate (default: the checkpoint's own state, else adam)",
    )
    p.add_argument("--json", action="store_true", help="print the tree as JSON")
    p.set_defaults(run=run)
    return p


def check_depth(depth: int | None) -> None:
    """``--depth`` is 0 (the root only) or more, or absent (every depth)."""
    if depth is not None and depth < 0:
        raise UsageError(f"--depth {depth}: must be 0 (the whole model only) or more")


def run(args: argparse.Namespace) -> int:
    check_depth(args.depth)
    model = None
    if args.model:
        from ckptboard.core.model_spec import load_model

        model = load_model(args.model, device="meta")
    result = load_checkpoint_size(args.path, model=model, trust=args.trust, group=args.group, optimizer=args.optimizer)
    if args.json:
        print(json.dumps(result.to_json(args.depth), indent=2))
    else:
        print(_render(result, args.depth))
    return 0


# ---------------------------------------------------------------------------------------------- formatting


def format_count(n: int | None) -> str:
    return "" if n is None else f"{int(n):,}"


def module_label(module: str) -> str:
    """``(model)`` for the root, else the last dotted part, indented two spaces per depth."""
    if not module:
        return _ROOT_LABEL
    return "  " * (module.count(".") + 1) + module.rpartition(".")[2]


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _render(result: CheckpointSize, max_depth: int | None) -> str:
    root = result.tree
    group = repr(result.group) if result.group else "the bare state_dict"
    lines = [f"{result.path}  ({group})", ""]
    headers = ["module", "parameters", "trainable", "frozen", "unknown", "buffers", "bytes", "% bytes", "tied"]
    rows = [
        [
            module_label(n.module), format_count(n.parameters), format_count(n.trainable), format_count(n.frozen),
            format_count(n.unknown), format_count(n.buffers), format_bytes(n.bytes),
            f"{100 * n.bytes / root.bytes:.1f}%" if root.bytes else "-", format_count(n.tied),
        ]
        for n in root.walk(max_depth)
    ]
    lines.append(format_table(headers, rows))
    dtypes = ", ".join(f"{d} {format_count(b)} B" for d, b in root.bytes_by_dtype.items()) or "none"
    lines += [
        "",
        f"total: {root.parameters:,} parameters ({root.trainable:,} trainable, {root.frozen:,} frozen, "
        f"{root.unknown:,} unknown), {root.buffers:,} buffer elements, {root.bytes:,} bytes "
        f"({format_bytes(root.bytes)}) by dtype: {dtypes}",
    ]
    if root.tied:
        lines.append(f"tied tensors (views of a tensor counted once, shown as 'tied'): {root.tied}")
    lines += ["", *_render_memory(result.memory), "", *_render_estimate(result.estimate)]
    if result.notes:
        lines += ["", "notes:", *(f"  - {n}" for n in result.notes)]
    return "\n".join(lines)


def _render_memory(mem: TrainingMemory) -> list[str]:
    dtypes = sorted(set(mem.weights) | set(mem.gradients) | set(mem.optimizer_state))
    rows = [
        [d, format_bytes(mem.weights.get(d, 0)), format_bytes(mem.gradients.get(d, 0)),
         format_bytes(mem.optimizer_state.get(d, 0)), format_bytes(mem.total_by_dtype.get(d, 0))]
        for d in dtypes
    ]
    rows.append(["total", format_bytes(sum(mem.weights.values())), format_bytes(sum(mem.gradients.values())),
                 format_bytes(sum(mem.optimizer_state.values())), format_bytes(mem.total_bytes)])
    head = f"training memory ESTIMATE, optimizer {mem.optimizer} ({mem.optimizer_source}): {mem.total_bytes:,} bytes"
    table = format_table(["dtype", "weights", "gradients", "optimizer", "total"], rows)
    return [head, *("  " + t for t in table.splitlines()), "  assumptions:", *(f"   - {a}" for a in mem.assumptions)]


def _render_estimate(est: FlopEstimate) -> list[str]:
    n_linear = sum(1 for layer in est.layers if layer.kind == "linear")
    lines = [f"FLOP {est.label}", f"  linear layers ({n_linear}): {est.linear_flops_per_token:,} FLOP per token"]
    convs = est.conv_flops_per_output_position
    if convs:
        lines.append("  conv layers, FLOP per output position: " + ", ".join(f"{k} {v:,}" for k, v in convs.items()))
    return lines + [f"  caveat: {c}" for c in est.caveats]


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
