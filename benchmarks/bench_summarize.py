"""Speed of ``summarize``: a no-change re-run over 100 small checkpoints, and first-run throughput on big ones.

1. No-change re-run (target: under 1 s beyond start-up). A 100-checkpoint run of a small model is written and
   summarised once; then, ``--repeats`` times each: ``summarize(ROOT)`` and ``load_stats(ROOT)`` in this process,
   ``ckptboard summarize ROOT`` as a process, and ``python -c "import ...; build_parser()"`` of what that process
   imports (interpreter + imports + parser). Medians are printed, and the process median minus the start-up median.
2. First-run throughput: ``--big`` checkpoints of ``--big-mb`` MB (fp32, transformer-like shapes) summarised into a
   fresh cache, page cache warm (files read once first), in this process: GB/s, median of ``--repeats``.

Usage: ``python benchmarks/bench_summarize.py [--work DIR] [--checkpoints 100] [--repeats 5] [--big 3]
[--big-mb 100] [--threads 1]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ckptboard.core.summarize import summarize
from ckptboard.core.load import load_stats

# Start-up: the interpreter, the imports and the CLI's parser, everything before the command does its work.
_STARTUP = "import ckptboard.dashboard.cli as c, ckptboard.core.summarize, ckptboard.core.stats, tqdm; c.build_parser()"


def write_small_series(run_dir: Path, n: int, seed: int = 0) -> None:
    """``n`` state_dicts of 12 small tensors (a 3-layer MLP with LayerNorms), a seeded step apart."""
    if run_dir.is_dir() and len(list(run_dir.glob("*.pt"))) == n:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(32, 32) for _ in range(3)] + [torch.nn.LayerNorm(32) for _ in range(3)]
    model = torch.nn.Sequential(*layers)
    for i in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        torch.save({"global_step": i * 10, "state_dict": model.state_dict()}, run_dir / f"step={i * 10:06d}.pt")


def write_big_series(run_dir: Path, n: int, mb: int, seed: int = 0) -> int:
    """``n`` fp32 checkpoints of about ``mb`` MB in blocks of (4d×d, d×4d, 4 × d×d) matrices; returns bytes."""
    d = 512
    per_block = (4 * d * d + 4 * d * d + 4 * d * d) * 4  # bytes: fc1, fc2, q/k/v/o
    blocks = max(1, mb * 1_000_000 // per_block)
    if not (run_dir.is_dir() and len(list(run_dir.glob("*.pt"))) == n):
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        g = torch.Generator().manual_seed(seed)
        for i in range(n):
            state = {}
            for b in range(blocks):
                state[f"blocks.{b}.fc1.weight"] = torch.randn(4 * d, d, generator=g) * 0.02
                state[f"blocks.{b}.fc2.weight"] = torch.randn(d, 4 * d, generator=g) * 0.02
                for name in ("q", "k", "v", "o"):
                    state[f"blocks.{b}.attn.{name}.weight"] = torch.randn(d, d, generator=g) * 0.02
                state[f"blocks.{b}.ln.weight"] = torch.ones(d)
            torch.save(state, run_dir / f"step={i:06d}.pt")
    return sum(p.stat().st_size for p in run_dir.glob("*.pt"))


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _process(args: list[str]) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bench_no_change(work: Path, n: int, repeats: int) -> None:
    root = work / "small"
    write_small_series(root / "run", n)
    shutil.rmtree(root / ".ckptboard", ignore_errors=True)
    first = _time(lambda: summarize(root))
    report = summarize(root)
    assert report.cached == n and report.computed == 0, report
    in_process = [_time(lambda: summarize(root)) for _ in range(repeats)]
    loading = [_time(lambda: load_stats(root)) for _ in range(repeats)]
    cli = [sys.executable, "-m", "ckptboard.dashboard.cli", "summarize", str(root), "--workers", "1"]
    startup = [_time(lambda: _process([sys.executable, "-c", _STARTUP])) for _ in range(repeats)]
    process = [_time(lambda: _process(cli)) for _ in range(repeats)]
    s, p = statistics.median(startup), statistics.median(process)
    print(f"no-change re-run, {n} checkpoints (first run {first:.2f} s):")
    print(f"  in-process summarize():            median {statistics.median(in_process) * 1000:7.1f} ms  "
          f"(all: {', '.join(f'{t * 1000:.0f}' for t in in_process)})")
    print(f"  load_stats() of those fragments:   median {statistics.median(loading) * 1000:7.1f} ms")
    print(f"  `ckptboard summarize` process:     median {p * 1000:7.1f} ms")
    print(f"  interpreter + imports (start-up):  median {s * 1000:7.1f} ms")
    print(f"  process minus start-up:            {(p - s) * 1000:7.1f} ms   (target < 1000 ms)")


def bench_first_run(work: Path, n: int, mb: int, repeats: int) -> None:
    root = work / "big"
    total = write_big_series(root / "run", n, mb)
    for path in (root / "run").glob("*.pt"):
        path.read_bytes()  # page cache warm
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            times.append(_time(lambda: summarize(root, cache_dir=cache)))
    t = statistics.median(times)
    print(f"first run, {n} checkpoints x ~{mb} MB fp32 ({total / 1e9:.2f} GB), in-process, 1 worker:")
    print(f"  median {t:.2f} s  ->  {total / 1e9 / t:.2f} GB/s   (all: {', '.join(f'{x:.2f}' for x in times)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ckptboard-bench-summarize")
    parser.add_argument("--checkpoints", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    bench_no_change(args.work, args.checkpoints, args.repeats)
    if args.big:
        bench_first_run(args.work, args.big, args.big_mb, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
