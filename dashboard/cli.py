"""The ``ckptboard`` command: one subcommand per module in ``dashboard/commands``.

Every subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. The dispatcher catches
:class:`CkptboardError` only, prints ``TypeName: message`` on one line and exits 1; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ckptboard.core.errors import CkptboardError

__all__ = ["main", "build_parser"]

_COMMANDS = ("inspect", "size", "flops", "diff", "summarize", "export", "serve")
_EXAMPLES = """examples:
  ckptboard serve runs/                                # the dashboard over every run under runs/
  ckptboard inspect runs/a/epoch=3-step=120.ckpt       # every tensor of one checkpoint, classified
  ckptboard size model.safetensors --depth 2           # parameters and bytes per module
  ckptboard flops --model model.py:Net --input-shape 1,3,224,224
  ckptboard summarize runs/ --workers 2                # fill the stats cache ahead of serve
  ckptboard export runs/ --out report/ --format html,csv
  ckptboard diff base/ finetuned/                     # any two checkpoints, keys aligned across prefixes

`ckptboard COMMAND --help` lists a command's options."""


def _version() -> str:
    """The installed distribution's version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ckptboard")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckptboard",
        description="See inside the PyTorch checkpoints a training run already saved.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"ckptboard.dashboard.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CkptboardError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
