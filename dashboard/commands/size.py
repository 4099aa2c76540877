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
from typing import Any

from typing import TYPE_CHECKING

from ckptboard.core.records import OptimizerKind
from ckptboard.core.validate import check_depth, existing_path
from ckptboard.dashboard.text import format_bytes, format_count, format_table, module_label

if TYPE_CHECKING:  # torch comes with these: imported by run, after the arguments are checked
    from ckptboard.core.checkpoint_size import CheckpointSize
    from ckptboard.core.flop_estimate import FlopEstimate
    from ckptboard.core.size import TrainingMemory

__all__ = ["add_parser", "run"]


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


def run(args: argparse.Namespace) -> int:
    check_depth(args.depth)
    existing_path(args.path)
    from ckptboard.core.checkpoint_size import load_checkpoint_size

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


