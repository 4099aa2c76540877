"""``ckptboard inspect PATH [--model SPEC] [--trust] [--device DEV] [--json]``: every tensor of one checkpoint,
classified, without reading tensor data.

The table lists name, kind, trainable, shape, dtype, size and source per group, then a footer (parameters,
buffers, bytes by dtype, step, format, optimizer state, skipped globals, notes, model report). ``--json`` prints
the object built by :func:`ckptboard.core.inspect_report.inspect_report` (its keys are documented there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ckptboard.core.errors import UsageError
from ckptboard.dashboard.text import format_bytes, format_table

__all__ = ["add_parser", "run"]

_COLUMNS = ("name", "kind", "trainable", "shape", "dtype", "size", "source")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="list and classify every tensor of one checkpoint",
        description="List every tensor of a checkpoint file or Hugging Face folder, classified as a parameter "
        "(trainable, frozen or unknown) or a buffer, with the rule that decided. Reads no tensor data.",
    )
    parser.add_argument("path", metavar="PATH", help="checkpoint file, or a Hugging Face model folder")
    parser.add_argument("--model", metavar="SPEC", default=None,
                        help="path/to/file.py:factory or package.module:factory (a class or zero-argument "
                        "function), built on the meta device; makes classification exact")
    parser.add_argument("--trust", action="store_true",
                        help="allow pickled code to run (whole pickled modules, TorchScript); only for files you trust")
    parser.add_argument("--device", default="cpu", help="where tensors would be materialised: cpu (default) or cuda[:N]")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate the options, open, classify, print."""
    from ckptboard.core.classify import classify
    from ckptboard.core.inspect_report import inspect_report
    from ckptboard.core.model_spec import load_model, parse_spec
    from ckptboard.core.reader import open_checkpoint

    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder; pass a checkpoint file or a Hugging Face model folder")
    if args.model is not None:
        parse_spec(args.model)
    model = load_model(args.model) if args.model is not None else None
    # open_checkpoint checks --device before it opens anything.
    with open_checkpoint(path, device=args.device, trust=args.trust) as ckpt:
        result = classify(ckpt, model, trust=args.trust)
        data = inspect_report(ckpt, result.report, result.model_source)
    if args.json:
        print(json.dumps(data, default=str))
    else:
        print(_format_report(data))
    return 0


def _format_report(data: dict[str, Any]) -> str:
    """The readable table and footer for an :func:`inspect_report` object."""
    lines: list[str] = []
    for group in data["groups"]:
        rows = [_row(t) for t in data["tensors"] if t["group"] == group["name"]]
        title = f"group {group['name']!r}" if group["name"] else "state_dict"
        if group["stripped_prefix"]:
            title += f" (prefix {group['stripped_prefix']!r} stripped)"
        lines += [f"{title}: {len(rows)} tensors", *_table(rows), ""]
    lines += _footer(data)
    return "\n".join(lines)


def _row(t: dict[str, Any]) -> tuple[str, ...]:
    trainable = {True: "true", False: "false", None: "unknown"}[t["trainable"]]
    size = f"= {t['tied_to']}" if t["tied_to"] else format_bytes(t["nbytes"])
    shape = "[" + ", ".join(map(str, t["shape"])) + "]"
    return (t["name"], t["kind"], trainable, shape, t["dtype"], size, t["source"])


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    return format_table(_COLUMNS, rows, right={_COLUMNS.index("size")}, rule=True).splitlines()


def _footer(data: dict[str, Any]) -> list[str]:
    t = data["totals"]
    lines = [
        f"parameters: {t['parameters']:,} ({format_bytes(t['parameter_bytes'])}) in {t['parameter_tensors']} tensors: "
        f"trainable {t['trainable_parameters']:,}, frozen {t['frozen_parameters']:,}, "
        f"unknown {t['unknown_parameters']:,}",
        f"buffers: {t['buffers']:,} ({format_bytes(t['buffer_bytes'])}) in {t['buffer_tensors']} tensors",
        "bytes by dtype: " + (", ".join(f"{d} {format_bytes(b)}" for d, b in t["bytes_by_dtype"].items()) or "none")
        + (f" (tied tensors counted once: {t['tied_tensors']})" if t["tied_tensors"] else ""),
        f"step: {data['step'] if data['step'] is not None else 'none'} (source: {data['step_source']})",
        f"format: {data['format']}",
        f"classified by: {data.get('model_source') or 'the rules (no model; the source column names each rule)'}",
    ]
    if data["optimizers"]:
        for opt in data["optimizers"]:
            states = ", ".join(opt["states"]) or "no state"
            lines.append(
                f"optimizer {opt['key_path']!r}: {opt['params']} parameters in {opt['param_groups']} "
                f"param groups, state {states} ({format_bytes(opt['state_bytes'])})"
            )
    else:
        lines.append("optimizer: no optimizer state found")
    if data["skipped_globals"]:
        lines.append("skipped globals (kept as inert placeholders): " + ", ".join(data["skipped_globals"]))
    lines += [f"note: {note}" for note in data["notes"]]
    if "model_report" in data:
        lines += _model_report_lines(data["model_report"])
    return lines


def _model_report_lines(r: dict[str, Any]) -> list[str]:
    where = f"group {r['group']!r}" if r["group"] else "the state_dict"
    if r["checkpoint_prefix"]:
        where += f", checkpoint prefix {r['checkpoint_prefix']!r} stripped"
    if r["model_prefix"]:
        where += f", model prefix {r['model_prefix']!r} added"
    lines = [f"model report ({where}): {r['matched']} keys matched"]
    sections = (
        ("missing keys (in the model, not in the checkpoint)", r["missing_keys"]),
        ("unexpected keys (in the checkpoint, not in the model)", r["unexpected_keys"]),
        ("shape mismatches", [
            f"{m['name']}: checkpoint {m['checkpoint_shape']} vs model {m['model_shape']}" for m in r["shape_mismatches"]
        ]),
        ("non-persistent buffers (absent by design)", r["non_persistent_buffers"]),
        ("plain tensor attributes (neither parameter nor buffer: never saved, ignore .to(device))",
         r["plain_tensor_attributes"]),
        ("other groups classified by the model", r["other_groups"]),
        ("requires_grad disagrees with the optimizer state", r["trainable_disagreements"]),
        ("tied keys (saved once, under the other name)", r.get("tied_keys", [])),
        ("keys the model does not save (_keys_to_ignore_on_save)", r.get("ignored_on_save", [])),
    )
    for title, items in sections:
        lines.append(f"  {title}: {len(items)}")
        lines += [f"    {item}" for item in items]
    return lines
