"""``ckptboard summarize ROOT``: reduce every checkpoint under ROOT to cached statistics, with a progress bar.

Prints a tqdm bar over the bytes still to read, one line per file that failed (``FAILED relpath: Error: problem``,
on stderr) and one final line; exits 1 when a file failed, after every other file was summarised. The options
and the run are shared with ``ckptboard export`` (:mod:`ckptboard.dashboard.summarize_cli`).
"""

from __future__ import annotations

import argparse

from ckptboard.dashboard.summarize_cli import add_summarize_options, summarize_with_progress

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "summarize", help="compute and cache statistics of every checkpoint under ROOT",
        description="Reduce every checkpoint under ROOT to cached statistics (incremental: only new or changed "
                    "files are read).",
    )
    add_summarize_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = summarize_with_progress(args)
    return 0 if report.ok else 1
