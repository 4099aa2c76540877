"""Scale-out benchmark (run by hand): summarise one series with 1 local worker, 2 local workers and a 2-worker Dask
LocalCluster; report wall times, speed-ups, scaling efficiency and the Dask overhead per task.

The series is synthetic and transformer-like: ``--n`` Lightning-style ``.ckpt`` files of about ``--size-mb`` MB each
(fp32 embedding + pre-norm blocks), each step a small random walk from the last, so that update statistics are
real. Every run summarises into a fresh cache folder. The files stay in the page cache between runs (they were
just written), so this measures the statistics, not the disk. The data is deleted at the end unless ``--keep``.

Usage: ``python benchmarks/bench_scaleout.py [--dir /tmp/ckptboard-scaleout] [--n 16] [--size-mb 250]
[--repeats 3] [--tiny-tasks 100] [--keep]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ckptboard.core.executors import LocalExecutor
from ckptboard.core.executors_dask import DaskExecutor
from ckptboard.core.summarize import summarize

__all__ = ["TinyTask", "noop", "burn", "make_series", "main"]

D_MODEL = 1024
VOCAB = 12288


class _Block(nn.Module):
    """A pre-norm transformer block's parameters (attention in/out projections, a 4x MLP)."""

    def __init__(self, d: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)


class _Model(nn.Module):
    def __init__(self, d: int, n_layers: int, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(_Block(d) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)


def _layers_for(size_mb: float, d: int = D_MODEL, vocab: int = VOCAB) -> int:
    per_layer = 12 * d * d * 4  # qkv 3d² + proj d² + MLP 8d², fp32 (biases and norms are noise at this size)
    return max(1, round((size_mb * 1e6 - vocab * d * 4) / per_layer))


def make_series(folder: Path, n: int, size_mb: float, seed: int = 0) -> list[Path]:
    """``n`` checkpoints of about ``size_mb`` MB under ``folder/run``, written one at a time."""
    torch.manual_seed(seed)
    run = folder / "run"
    run.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        model = _Model(D_MODEL, _layers_for(size_mb), VOCAB)
        paths = []
        for i in range(n):
            step = (i + 1) * 100
            if i:
                for p in model.parameters():
                    p.add_(torch.randn_like(p), alpha=1e-3)
            path = run / f"epoch={i}-step={step}.ckpt"
            torch.save({"epoch": i, "global_step": step, "state_dict": model.state_dict()}, path)
            paths.append(path)
    return paths


@dataclass
class TinyTask:
    """A task that does nothing: measures what the executor itself costs per task."""

    n: int

    def failed(self, problem: str, error: str = "WorkerLost", record: bool = False) -> tuple[int, str]:
        return (self.n, problem)


def noop(task: TinyTask) -> int:
    return task.n


def burn(task: TinyTask) -> int:
    """A fixed amount of pure CPU work (~0.2 s), no I/O: how much 2 workers can gain on this machine right now."""
    import numpy as np

    values = np.random.default_rng(task.n).random(1_000_000)
    for _ in range(3):
        np.sort(values)
    return task.n


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summarise_into(root: Path, cache: Path, executor) -> None:
    shutil.rmtree(cache, ignore_errors=True)
    report = summarize(root, cache_dir=cache, executor=executor)
    if not report.ok or report.computed == 0:
        raise SystemExit(f"benchmark run failed: {report.line()} {report.failures[:3]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ckptboard-scaleout"))
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--size-mb", type=float, default=250.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny-tasks", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # one core per worker everywhere: the 1-worker baseline must not use both cores
    root, caches = args.dir / "series", args.dir / "caches"
    print(f"cores: {len(os.sched_getaffinity(0))}, loadavg at start: {_loadavg()}", flush=True)
    try:
        start = time.perf_counter()
        paths = make_series(root, args.n, args.size_mb)
        total = sum(p.stat().st_size for p in paths)
        print(f"wrote {len(paths)} checkpoints, {total / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s",
              flush=True)

        def fresh_dask(n_workers: int = 2) -> DaskExecutor:
            return DaskExecutor(n_workers=n_workers, dashboard_address="127.0.0.1:0")

        with fresh_dask(1) as warm1, fresh_dask(2) as warm2:
            for warm in (LocalExecutor(1), warm1, warm2):  # torch and the kernels imported, workers up
                _summarise_into(root, caches / "warmup", warm)
            cpu_tasks = [TinyTask(i) for i in range(len(paths))]
            configs = {
                "local, 1 worker (in-process)": lambda: _summarise_into(root, caches / "l1", LocalExecutor(1)),
                "local, 2 workers": lambda: _summarise_into(root, caches / "l2", LocalExecutor(2)),
                # As the CLI runs it: a LocalCluster started (workers spawned, torch imported) and closed per run.
                "dask, 2 workers, new cluster": lambda: _summarise_into(root, caches / "d2", fresh_dask(2)),
                "dask, 1 worker, warm cluster": lambda: _summarise_into(root, caches / "w1", warm1),
                "dask, 2 workers, warm cluster": lambda: _summarise_into(root, caches / "w2", warm2),
                # The ceiling: the same amount of pure CPU work per task, no files.
                "cpu-only tasks, dask 1 worker": lambda: list(warm1.map_unordered(burn, cpu_tasks)),
                "cpu-only tasks, dask 2 workers": lambda: list(warm2.map_unordered(burn, cpu_tasks)),
            }
            results: dict[str, list[float]] = {label: [] for label in configs}
            # Round-robin, so that the load of a shared machine drifts over every configuration alike.
            for r in range(args.repeats):
                print(f"round {r + 1}, loadavg {_loadavg()}:", flush=True)
                for label, fn in configs.items():
                    results[label].append(_timed(fn))
                    print(f"  {label:32s} {results[label][-1]:7.2f} s", flush=True)
            tiny = [TinyTask(i) for i in range(args.tiny_tasks)]
            overhead = [_timed(lambda: list(warm2.map_unordered(noop, tiny))) for _ in range(args.repeats)]
        startup = [_timed(lambda: fresh_dask(2).start().close()) for _ in range(args.repeats)]

        base = results["local, 1 worker (in-process)"]
        print(f"\n{len(paths)} x {total / len(paths) / 1e6:.0f} MB ({total / 1e9:.2f} GB), median of {args.repeats} "
              "rounds; speed-up = median over rounds of (1-worker time / this time) in the same round")
        print(f"{'executor':32s} {'wall s':>8s} {'GB/s':>6s} {'speed-up':>9s} {'efficiency':>10s}")
        for label, times in results.items():
            if label.startswith("cpu-only"):
                continue
            med = statistics.median(times)
            workers = 1 if "1 worker" in label else 2
            ratio = statistics.median(b / t for b, t in zip(base, times))
            print(f"{label:32s} {med:8.2f} {total / 1e9 / med:6.2f} {ratio:8.2f}x {ratio / workers:10.0%}")
        scaling = statistics.median(a / b for a, b in zip(results["dask, 1 worker, warm cluster"],
                                                          results["dask, 2 workers, warm cluster"]))
        ceiling = statistics.median(a / b for a, b in zip(results["cpu-only tasks, dask 1 worker"],
                                                          results["cpu-only tasks, dask 2 workers"]))
        print(f"dask warm, 2 workers over 1 worker: {scaling:.2f}x ({scaling / 2:.0%} efficiency); the same for "
              f"cpu-only tasks (what this machine allows now): {ceiling:.2f}x ({ceiling / 2:.0%})")
        per_task = statistics.median(overhead) / args.tiny_tasks
        print(f"dask overhead: {per_task * 1e3:.2f} ms per task ({args.tiny_tasks} no-op tasks on a warm 2-worker "
              f"cluster, median {statistics.median(overhead):.3f} s); LocalCluster start+stop "
              f"{statistics.median(startup):.2f} s (median of {args.repeats})")
        print(f"loadavg at end: {_loadavg()}")
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
