"""``ckptboard flops --model SPEC --input-shape 1,3,32,32``: FLOPs per module, counted by ``FlopCounterMode``.

``--json`` prints ``FlopReport.to_json()`` (definitions in ckptboard.core.flops)::

    {"total_flops": int, "unit": "FLOP",
     "modules": [{"module": str, "flops": int, "macs": int, "depth": int, "by_op": {op: int}}, ...],
     "unsupported_ops": [{"op": str, "category": "pointwise"|"reduction"|"other", "calls": int,
                          "modules": [str, ...]}, ...],
     "macs": int, "model": str, "inputs": [{"shape": [int, ...], "dtype": str}], "device": str, "notes": [str]}

With ``--checkpoint PATH`` each module also gets ``parameters``, ``buffers`` and ``bytes`` from the checkpoint (0 for
a module without tensors there), and the object gets ``checkpoint`` (the path), ``group`` and
``checkpoint_only_modules`` (module paths of the checkpoint the model lacks). With ``--checkpoint`` and no
``--model``, only the shape-based estimate is printed: ``{"path": str, "estimate": {...}}``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pandas as pd

from ckptboard.core.errors import UsageError
from ckptboard.core.flops import FlopReport, count_flops, module_table, parse_input_specs
from ckptboard.core.checkpoint_size import CheckpointSize, check_depth, load_checkpoint_size
from ckptboard.dashboard.text import format_count, format_si, format_table, module_label

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "flops",
        help="FLOPs per module of a model's forward (multiply-add = 2 FLOP)",
        description="Count the FLOPs of a model's forward per module with torch's FlopCounterMode.\n"
        "Needs --model (with --input-shape) or --checkpoint; --checkpoint alone prints a shape-based estimate.",
        epilog="examples:\n  ckptboard flops --model model.py:Net --input-shape 1,3,224,224\n"
        "  ckptboard flops --model model.py:Net --input-shape 1,3,224,224 --checkpoint last.ckpt\n"
        "  ckptboard flops --checkpoint last.ckpt            # estimate from shapes, no model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", metavar="SPEC",
                   help="file.py:factory or package.module:factory (required unless --checkpoint is given)")
    p.add_argument(
        "--input-shape", action="append", default=[], metavar="SHAPE",
        help="shape of one positional input, e.g. 1,3,32,32; repeat for several inputs",
    )
    p.add_argument(
        "--input-dtype", action="append", default=[], metavar="DTYPE",
        help="dtype of each input in order (default float32; int64 for token ids, filled with zeros)",
    )
    p.add_argument("--checkpoint", metavar="PATH", help="also show the checkpoint's sizes on the same module tree "
                   "(required unless --model is given; alone: a shape-based estimate)")
    p.add_argument("--trust", action="store_true", help="allow unpickling code in --checkpoint")
    p.add_argument("--group", metavar="NAME", help="state_dict inside --checkpoint (default: the model's)")
    p.add_argument("--depth", type=int, default=None, metavar="N", help="show modules down to depth N (root: 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_depth(args.depth)
    if not args.model:
        if not args.checkpoint:
            raise UsageError("give --model SPEC (and --input-shape) to count FLOPs, or --checkpoint PATH to estimate")
        return _run_estimate(args)
    inputs = parse_input_specs(args.input_shape, args.input_dtype)  # validated before anything is built

    from ckptboard.core.model_spec import load_model

    model = load_model(args.model, device="meta")
    sizes = None
    if args.checkpoint:
        sizes = load_checkpoint_size(args.checkpoint, model=model, trust=args.trust, group=args.group)
    report = count_flops(model, inputs, build_cpu_model=lambda: load_model(args.model, device="cpu"))
    if args.json:
        print(json.dumps(_to_json(report, sizes, args.depth), indent=2))
    else:
        print(_render(report, sizes, args.depth))
    return 0


def _run_estimate(args: argparse.Namespace) -> int:
    sizes = load_checkpoint_size(args.checkpoint, trust=args.trust, group=args.group)
    if args.json:
        print(json.dumps({"path": sizes.path, "estimate": sizes.estimate.to_json()}, indent=2))
        return 0
    est = sizes.estimate
    rows = [[layer.weight, layer.kind, layer.rule, format_count(layer.flops), layer.per] for layer in est.layers]
    print(f"{sizes.path}: FLOP {est.label}")
    print(format_table(["weight", "layer", "rule", "FLOP", "per"], rows))
    print(f"linear layers: {est.linear_flops_per_token:,} FLOP per token")
    print("\n".join(f"caveat: {c}" for c in est.caveats))
    return 0


def _to_json(report: FlopReport, sizes: CheckpointSize | None, max_depth: int | None) -> dict[str, Any]:
    out = report.to_json(max_depth)
    if sizes is None:
        return out
    nodes = {n.module: n for n in sizes.tree.walk()}
    for entry in out["modules"]:
        node = nodes.get(entry["module"])
        entry.update(
            parameters=node.parameters if node else 0, buffers=node.buffers if node else 0,
            bytes=node.bytes if node else 0,
        )
    model_paths = {m.module for m in report.modules}
    out["checkpoint"] = sizes.path
    out["group"] = sizes.group
    out["checkpoint_only_modules"] = [n.module for n in sizes.tree.walk() if n.module not in model_paths]
    return out


def _render(report: FlopReport, sizes: CheckpointSize | None, max_depth: int | None) -> str:
    inputs = ", ".join(spec.label for spec in report.inputs)
    lines = [
        f"FLOPs of {report.model} on input {inputs}, counted by torch FlopCounterMode on {report.device}; "
        "a multiply-add counts 2 FLOP (1 MAC)",
        "",
    ]
    table = module_table(sizes.tree if sizes else None, report, max_depth)
    total = report.total_flops
    headers = ["module", "FLOP", "MAC", "% FLOP"] + (["parameters", "buffers", "bytes"] if sizes else [])
    rows = []
    for r in table.itertuples(index=False):
        flops = None if pd.isna(r.flops) else int(r.flops)
        row = [
            module_label(r.module), format_count(flops), format_count(None if flops is None else flops // 2),
            "" if flops is None else (f"{100 * flops / total:.1f}%" if total else "-"),
        ]
        if sizes:
            row += [format_count(int(r.params)), format_count(int(r.buffers)), format_count(int(r.bytes))]
        rows.append(row)
    lines.append(format_table(headers, rows))
    lines += ["", f"total: {total:,} FLOP ({format_si(total, 'FLOP')}) = {report.total_macs:,} MAC"]
    if sizes:
        lines.append(f"checkpoint: {sizes.path} ({sizes.tree.parameters:,} parameters, {sizes.tree.bytes:,} bytes)")
    if report.unsupported_ops:
        lines += ["", "ops with no FLOP formula, counted as 0 (pointwise ones by the counter's design):"]
        op_rows = [
            [op.op, op.category, f"{op.calls:,}", ", ".join(m or "(model)" for m in op.modules)]
            for op in report.unsupported_ops
        ]
        lines += ["  " + t for t in format_table(["op", "category", "calls", "in modules"], op_rows).splitlines()]
    notes = report.notes + (sizes.notes if sizes else [])
    if notes:
        lines += ["", "notes:", *(f"  - {n}" for n in notes)]
    return "\n".join(lines)
