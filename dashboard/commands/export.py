"""``ckptboard export ROOT --out DIR --format csv[,parquet,html,png,tensorboard]``: summarise what is missing, write the tables.

Options are validated before any file is opened; then ROOT is summarised exactly as ``ckptboard summarize`` would
(progress bar, failure lines), the cache is read back with ``load_stats`` and each format's writer runs. Exits 1
when a checkpoint failed (its row is in ``errors.csv``), after everything else was written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckptboard.dashboard.summarize_cli import add_summarize_options, check_summarize_options, summarize_with_progress

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write the statistics of every checkpoint under ROOT as CSV/Parquet (or a report)",
        description="Summarise what is missing under ROOT, then write stats.csv, updates.csv, batchnorm.csv, "
                    "events.csv, checkpoints.csv and errors.csv (and/or .parquet, histograms included).",
    )
    add_summarize_options(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the files into")
    parser.add_argument("--format", default="csv", metavar="FMT[,FMT]",
                        help="comma-separated: csv, parquet, html, png, tensorboard (default: csv)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_summarize_options(args)  # a bad ROOT is answered before pandas and torch are imported
    from tqdm import tqdm

    from ckptboard.core.load import load_stats
    from ckptboard.dashboard.export_tables import export_tables, parse_formats

    formats = parse_formats(args.format)  # at the boundary: before anything is read
    report = summarize_with_progress(args)
    tables = load_stats(Path(args.root), cache_dir=args.cache_dir)
    with tqdm(desc="export", unit="file", file=sys.stderr, dynamic_ncols=True) as bar:
        written = export_tables(tables, args.out, formats,
                                progress=lambda done, total, what: _advance(bar, done, total))
    print(f"wrote {len(written)} files to {args.out}")
    return 0 if report.ok else 1


def _advance(bar, done: int, total: int) -> None:
    if done == 1:  # a writer starts: its files (the report: its figures) join the bar
        bar.total = (bar.total or 0) + total
    bar.update(1)
