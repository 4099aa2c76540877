"""``ckptboard diff A B [--json]``: how checkpoint B differs from checkpoint A, tensor by tensor.

Keys are aligned exactly, then after stripping known wrapper prefixes, then by unique shape
(:mod:`ckptboard.core.diff`); each matched pair is streamed once. ``--json`` prints
:meth:`ckptboard.core.diff.DiffReport.to_json` (its keys are documented in the README).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ckptboard.core.errors import UsageError

__all__ = ["add_parser", "run", "format_diff"]

_COLUMNS = ("a", "b", "match", "kind", "shape", "rel_change", "cosine", "sign_flips", "max_abs_diff")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "diff",
        help="compare two checkpoints tensor by tensor (renamed or prefixed keys aligned)",
        description="Align the tensors of A and B (same name, then known prefixes such as module., model., "
        "base_model.model. stripped, then unique shapes) and report per tensor the relative change ||B-A||/||A||, "
        "the cosine similarity, sign flips and a histogram of B-A.",
    )
    parser.add_argument("a", metavar="A", help="checkpoint file or Hugging Face folder (the reference)")
    parser.add_argument("b", metavar="B", help="checkpoint file or Hugging Face folder (compared against A)")
    parser.add_argument("--group-a", default=None, metavar="NAME", help="compare only this state_dict of A")
    parser.add_argument("--group-b", default=None, metavar="NAME", help="compare only this state_dict of B")
    parser.add_argument("--top", type=int, default=20, metavar="N",
                        help="rows in the table: the N largest relative changes (default 20; 0 for all)")
    parser.add_argument("--bins", type=int, default=64, metavar="N",
                        help="at most N histogram cells per tensor in --json (default 64)")
    parser.add_argument("--trust", action="store_true",
                        help="allow pickled code to run (whole pickled modules, TorchScript); only for files you trust")
    parser.add_argument("--device", default="cpu", help="where the differences are computed: cpu (default) or cuda[:N]")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate the options, diff, print."""
    from ckptboard.core.devices import resolve_device
    from ckptboard.core.diff import diff_checkpoints

    for path in (args.a, args.b):
        if not Path(path).exists():
            raise UsageError(f"{path}: no such file or folder; pass two checkpoint files or Hugging Face folders")
    if args.top < 0:
        raise UsageError(f"--top must be 0 or more, got {args.top}")
    if args.bins < 1:
        raise UsageError(f"--bins must be at least 1, got {args.bins}")
    device = str(resolve_device(args.device))
    report = diff_checkpoints(args.a, args.b, device=device, trust=args.trust, group_a=args.group_a,
                              group_b=args.group_b, bins=args.bins)
    data = report.to_json()
    if args.json:
        print(json.dumps(data, allow_nan=False))
    else:
        print(format_diff(data, args.top))
    return 0


def format_diff(data: dict[str, Any], top: int = 20) -> str:
    """The readable summary and table of largest relative changes for a :meth:`DiffReport.to_json` object."""
    s = data["summary"]
    lines = [
        f"A: {data['a']}",
        f"B: {data['b']}",
        f"matched {s['matched']} tensors (exact {s['exact']}, prefix {s['prefix']}, shape {s['shape']}), "
        f"{s['identical']} identical; only in A: {s['only_a']}, only in B: {s['only_b']}, "
        f"shape mismatches: {s['shape_mismatches']}",
        f"parameters: ||B-A||/||A|| = {_num(s['rel_change'])}; sign flips {s['sign_flips']:,} of {s['numel']:,} elements",
        "",
    ]
    rows = sorted(data["tensors"], key=lambda t: (t["kind"] != "parameter",
                                                 -(t["rel_change"] if t["rel_change"] is not None else -1.0)))
    shown = rows if top == 0 else rows[:top]
    if shown:
        title = "largest relative changes, parameters first" if len(shown) < len(rows) else "tensors by relative change"
        lines += [f"{title} ({len(shown)} of {len(rows)}):", *_table([_row(t) for t in shown]), ""]
    for m in data["shape_mismatches"]:
        lines.append(f"shape mismatch: {m['a']} {m['shape_a']} vs {m['b']} {m['shape_b']}")
    for side in ("only_a", "only_b"):
        for t in data[side]:
            lines.append(f"only in {side[-1].upper()}: {t['name']} {t['shape']} {t['dtype']}")
    lines += [f"note: {note}" for note in data["notes"]]
    return "\n".join(lines).rstrip()


def _row(t: dict[str, Any]) -> tuple[str, ...]:
    shape = "[" + ", ".join(map(str, t["shape"])) + "]"
    b = "" if t["b"] == t["a"] else t["b"]
    return (t["a"], b, t["match"], t["kind"], shape, _num(t["rel_change"]), _num(t["cosine"]), f"{t['sign_flips']:,}",
            _num(t["max_abs_diff"]))


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4g}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(_COLUMNS)]
    numeric = set(range(5, len(_COLUMNS)))

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(_COLUMNS), line(["-" * w for w in widths]), *(line(r) for r in rows)]
