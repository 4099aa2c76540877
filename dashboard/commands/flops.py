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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptboard.core.errors import UsageError
from ckptboard.core.validate import check_depth, existing_path
from ckptboard.dashboard.text import format_count, format_si, format_table, module_label

if TYPE_CHECKING:  # torch comes with these: imported by run, after the arguments are checked
    from ckptboard.core.checkpoint_size import CheckpointSize
    from ckptboard.core.flops import FlopReport, InputSpec
    from ckptboard.core.train_flops import TrainingStepFlops

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "flops",
        help="FLOPs per module of a model's forward (multiply-add = 2 FLOP)",
        description="Count the FLOPs of a model's forward per module with torch's FlopCounterMode.\n"
        "Needs --model (with --input-shape) or --checkpoint; --checkpoint alone builds the model\n"
        "from a Hugging Face folder's config.json, else prints a shape-based estimate.",
        epilog="examples:\n  ckptboard flops --model model.py:Net --input-shape 1,3,224,224\n"
        "  ckptboard flops --model model.py:Net --input-shape 1,3,224,224 --checkpoint last.ckpt\n"
        "  ckptboard flops --checkpoint hf_model_folder/     # model and inputs from its config.json\n"
        "  ckptboard flops --checkpoint last.ckpt            # estimate from shapes, no model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", metavar="SPEC", help="file.py:factory, package.module:factory or hf:CONFIG_DIR_OR_JSON "
                   "(required unless --checkpoint is given)")
    p.add_argument(
        "--input-shape", action="append", default=[], metavar="SHAPE",
        help="shape of one positional input, e.g. 1,3,32,32; repeat for several inputs",
    )
    p.add_argument(
        "--input-dtype", action="append", default=[], metavar="DTYPE",
        help="dtype of each input in order (default float32; int64 for token ids, filled with zeros)",
    )
    p.add_argument(
        "--sequence-length", type=int, default=None, metavar="L",
        help="tokens per input when the inputs come from a transformers config (default 128, at most the config's "
        "maximum positions)",
    )
    p.add_argument("--training-step", action="store_true",
                   help="also count one training step (forward + backward) and show the 6·N·D rule beside it")
    p.add_argument("--checkpoint", metavar="PATH", help="also show the checkpoint's sizes on the same module tree "
                   "(required unless --model is given); alone, a Hugging Face folder's config.json builds the model, "
                   "else FLOPs are estimated from shapes")
    p.add_argument("--trust", action="store_true", help="allow unpickling code in --checkpoint")
    p.add_argument("--group", metavar="NAME", help="state_dict inside --checkpoint (default: the model's)")
    p.add_argument("--depth", type=int, default=None, metavar="N", help="show modules down to depth N (root: 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_depth(args.depth)
    if not args.model and not args.checkpoint:
        raise UsageError("give --model SPEC (and --input-shape) to count FLOPs, or --checkpoint PATH to estimate")
    if args.checkpoint:
        existing_path(args.checkpoint)  # answered before torch is imported
    from ckptboard.core.checkpoint_size import load_checkpoint_size
    from ckptboard.core.flops import count_flops, parse_input_specs
    from ckptboard.core.train_flops import count_training_step

    given = parse_input_specs(args.input_shape, args.input_dtype) if args.input_shape else None  # before building
    if args.input_dtype and not args.input_shape:
        raise UsageError("--input-dtype needs its --input-shape (one --input-dtype per --input-shape)")
    model, build_cpu_model, notes = _model(args)
    if model is None:
        return _run_estimate(args, notes)
    inputs, how = _inputs(given, model, args)
    sizes = None
    if args.checkpoint:
        sizes = load_checkpoint_size(args.checkpoint, model=model, trust=args.trust, group=args.group)
    report = count_flops(model, inputs, build_cpu_model=build_cpu_model)
    report.notes[:0] = notes + ([f"inputs from the config: {how}"] if how else [])
    training = count_training_step(model, inputs, build_cpu_model=build_cpu_model) if args.training_step else None
    if args.json:
        out = _to_json(report, sizes, args.depth)
        if training is not None:
            out["training_step"] = training.to_json()
        print(json.dumps(out, indent=2))
    else:
        print(_render(report, sizes, args.depth) + (_render_training(training) if training else ""))
    return 0


def _model(args: argparse.Namespace) -> tuple[Any, Callable[[], Any] | None, list[str]]:
    """``--model``, else the model of ``--checkpoint``'s config.json (transformers), else None (estimate only)."""
    from ckptboard.core.model_spec import load_model

    if args.model:
        return load_model(args.model, device="meta"), lambda: load_model(args.model, device="cpu"), []
    from ckptboard.core.errors import ModelSpecError
    from ckptboard.core.hf_model import HF_EXTRA_HINT, build_from_config, find_config, transformers_installed

    config, peft_base = find_config(Path(args.checkpoint))
    if config is None or peft_base:
        return None, None, []
    if not transformers_installed():
        return None, None, [f"{config} found; {HF_EXTRA_HINT} and count FLOPs"]
    try:
        model, arch = build_from_config(config, trust=args.trust)
    except ModelSpecError as e:
        return None, None, [f"config.json not used: {e}"]
    return model, lambda: build_from_config(config, trust=args.trust, device="cpu")[0], [
        f"model: {arch} built from {config}"
    ]


def _inputs(given: list[InputSpec] | None, model: Any, args: argparse.Namespace) -> tuple[list[InputSpec], str]:
    """``--input-shape`` when given, else the inputs a transformers config implies."""
    if given is not None:
        return given, ""
    from ckptboard.core.hf_inputs import default_inputs

    defaults = default_inputs(model, args.sequence_length)
    if defaults is None:
        raise UsageError(
            f"give the model's input shape with --input-shape, e.g. --input-shape 1,3,32,32 (and --input-dtype "
            f"int64 for token ids): {type(model).__name__} has no transformers config to take it from"
        )
    return defaults.specs, defaults.description


def _render_training(t: TrainingStepFlops) -> str:
    lines = ["", f"training step ({t.device}): forward {t.forward_flops:,} + backward {t.backward_flops:,} = "
             f"{t.total_flops:,} FLOP ({format_si(t.total_flops, 'FLOP')})"]
    if t.six_n_d is not None:
        lines.append(f"  6·N·D rule: 6 x {t.trainable_parameters:,} x {t.tokens:,} tokens = {t.six_n_d:,} FLOP "
                     f"({format_si(t.six_n_d, 'FLOP')})")
    else:
        lines.append("  6·N·D rule: not given (the inputs are not token ids)")
    return "\n".join(lines + ["  assumptions:", *(f"   - {a}" for a in t.assumptions)])


def _run_estimate(args: argparse.Namespace, notes: list[str]) -> int:
    from ckptboard.core.checkpoint_size import load_checkpoint_size

    sizes = load_checkpoint_size(args.checkpoint, trust=args.trust, group=args.group)
    sizes.estimate.caveats += notes
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
    import pandas as pd

    from ckptboard.core.flops import module_table

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
