"""Local process pool benchmark (run by hand): in-process vs ``LocalExecutor(2)`` by start method, one series.

Run from a single-threaded process (as the CLI is): that is when ``LocalExecutor`` forks. Rounds rotate the
configurations so load drift hits each alike; speed-up = in-process median / that median. The series is
``bench_scaleout.make_series`` (16 x ~250 MB Lightning-style files, page cache warm); deleted unless ``--keep``.

Usage: ``python benchmarks/bench_local_pool.py [--dir /tmp/ckptboard-local-pool] [--n 16] [--size-mb 250]
[--repeats 3] [--keep]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scaleout import _loadavg, _summarise_into, _timed, make_series  # noqa: E402

from ckptboard.core.executors import LocalExecutor  # noqa: E402

CONFIGS = {
    "in-process (1 worker)": lambda: LocalExecutor(1),
    "2 workers, default (fork here)": lambda: LocalExecutor(2),
    "2 workers, spawn": lambda: LocalExecutor(2, start_method="spawn"),
    "2 workers, forkserver": lambda: LocalExecutor(2, start_method="forkserver"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ckptboard-local-pool"))
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--size-mb", type=float, default=250.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root, caches = args.dir / "series", args.dir / "caches"
    try:
        if not root.exists():
            make_series(root, args.n, args.size_mb)
        gb = sum(p.stat().st_size for p in root.rglob("*.ckpt")) / 1e9
        print(f"{args.n} checkpoints, {gb:.2f} GB; loadavg at start {_loadavg()}")
        times: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for _ in range(args.repeats):
            for name, make in CONFIGS.items():
                times[name].append(_timed(lambda: _summarise_into(root, caches / "c", make())))
        base = statistics.median(times["in-process (1 worker)"])
        print(f"{'executor':34s} {'median s':>9s} {'GB/s':>6s} {'speed-up':>9s}   runs")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:34s} {med:9.2f} {gb / med:6.2f} {base / med:8.2f}x   {', '.join(f'{t:.2f}' for t in ts)}")
        print(f"loadavg at end {_loadavg()}")
    finally:
        shutil.rmtree(caches, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
