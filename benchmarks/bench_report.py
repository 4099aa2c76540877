"""Speed of the HTML report export on a series of 200 checkpoints × 500 tensors (spec: under a minute).

By default the tables are ``tests/_fixtures_tables.synthetic_tables(200, 500, runs=2)`` (two full runs plus a
one-checkpoint run: 401 checkpoints, 200k tensor rows), built in memory once and not timed. With ``--root`` the
tables are read from that folder's stats cache instead (``load_stats``, timed separately), e.g. the series that
``benchmarks/bench_app.py`` writes. Each round writes ``index.html`` into a fresh temporary folder; the median of
``--repeats`` rounds is printed with the figure count and file size.

Usage: ``python benchmarks/bench_report.py [--checkpoints 200] [--tensors 500] [--runs 2] [--repeats 3]
[--root ROOT [--cache-dir DIR]] [--png]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ckptboard.dashboard.report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _fixtures_tables import synthetic_tables  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--tensors", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, help="read the tables from this folder's stats cache instead")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--png", action="store_true", help="also time the PNG export (one round)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.root is not None:
        from ckptboard.core.load import load_stats

        tables = load_stats(args.root, args.cache_dir)
        source = f"load_stats({args.root})"
    else:
        tables = synthetic_tables(args.checkpoints, args.tensors, args.runs)
        source = f"synthetic_tables({args.checkpoints}, {args.tensors}, runs={args.runs})"
    print(f"{source}: {len(tables.checkpoints)} checkpoints, {len(tables.tensors)} tensor rows "
          f"in {time.perf_counter() - start:.2f} s (not part of the export timing)")

    seconds = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="ckptboard-report-") as out:
            t0 = time.perf_counter()
            result = write_report(tables, out, ["html"])
            seconds.append(time.perf_counter() - t0)
            size = (Path(out) / "index.html").stat().st_size
        print(f"round {i + 1}: {seconds[-1]:.2f} s, {result.n_figures} figures, index.html {size / 2**20:.1f} MiB")
    print(f"html export: median {statistics.median(seconds):.2f} s over {len(seconds)} rounds "
          f"(min {min(seconds):.2f}, max {max(seconds):.2f})")

    if args.png:
        with tempfile.TemporaryDirectory(prefix="ckptboard-report-") as out:
            t0 = time.perf_counter()
            result = write_report(tables, out, ["png"])
            print(f"png export: {time.perf_counter() - t0:.2f} s, {result.n_figures} figures"
                  + (f"; skipped: {result.skipped}" if result.skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
