"""Speed and memory of the statistics engine against the floor, TensorBoard and NumPy (run by hand).

Writes synthetic GPT-like checkpoints (``--gb`` GB fp32 and bf16, ``torch.save``) to a temporary folder, reads them
once so the page cache is warm, then times each method over every tensor, ``--repeat`` times, both in this process
and as separate processes (``python bench_stats.py --worker METHOD FILE``):

- ``floor``: ``torch.load(mmap=True)`` and one ``sum()`` per tensor (every byte touched once);
- ``ours``: :func:`ckptboard.core.stats.tensor_stats` per tensor;
- ``tensorboard``: ``SummaryWriter.add_histogram`` per tensor (bf16 upcast with ``.float()``, as a user must);
- ``numpy``: mean/std/min/max, ``np.histogram(bins=256)`` and ``np.percentile`` at the schema's percentiles;
- ``summarize`` (process only, when the command exists): ``ckptboard summarize DIR --workers 1`` into a fresh cache.

Process times have the median of ``python -c "import torch"`` subtracted. Peak anonymous memory is RssAnon (not
file-backed mmap pages) sampled every 2 ms, above its value after ``import torch``. ``--memory-gb 4`` also runs
``ours`` once as a process over a 4 GB fp32 checkpoint for the memory bound. torch runs with ``--threads`` threads.

Usage: ``python benchmarks/bench_stats.py [--gb 1] [--repeat 3] [--threads 1] [--memory-gb 4] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synth import write_transformer  # noqa: E402

METHODS = ("floor", "ours", "tensorboard", "numpy")


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class _PeakAnon:
    """Samples RssAnon in a thread; ``peak_mib`` is the most seen above the value at start."""

    def __enter__(self) -> "_PeakAnon":
        self.base = self.peak = _rss_anon_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_anon_kib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon_kib())

    @property
    def peak_mib(self) -> float:
        return (self.peak - self.base) / 1024


def _floor(state: dict[str, torch.Tensor]) -> None:
    for t in state.values():
        t.sum()


def _ours(state: dict[str, torch.Tensor]) -> None:
    from ckptboard.core.stats import tensor_stats

    for t in state.values():
        tensor_stats(t)


def _tensorboard(state: dict[str, torch.Tensor]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory(prefix="bench_tb_") as logdir:
        writer = SummaryWriter(logdir)
        for name, t in state.items():
            writer.add_histogram(name, t.float() if t.dtype == torch.bfloat16 else t, 0)
        writer.close()


def _numpy(state: dict[str, torch.Tensor]) -> None:
    from ckptboard.core.schema import PERCENTILES

    for t in state.values():
        a = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        a.mean(), a.std(), a.min(), a.max()
        np.histogram(a, bins=256)
        np.percentile(a, PERCENTILES)


_RUN = {"floor": _floor, "ours": _ours, "tensorboard": _tensorboard, "numpy": _numpy}


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, mmap=True, weights_only=True)


def worker(method: str, path: Path) -> None:
    """One method over one file in this (fresh) process; prints the peak anonymous memory as JSON."""
    with _PeakAnon() as mem:
        _RUN[method](_load(path))
    print(json.dumps({"peak_anon_mib": mem.peak_mib}))


def _median_in_process(method: str, path: Path, repeat: int) -> tuple[float, float]:
    times, peaks = [], []
    for _ in range(repeat):
        with _PeakAnon() as mem:
            start = time.perf_counter()
            _RUN[method](_load(path))
            times.append(time.perf_counter() - start)
        peaks.append(mem.peak_mib)
    return statistics.median(times), max(peaks)


def _timed_process(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    start = time.perf_counter()
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    try:
        return elapsed, json.loads(last).get("peak_anon_mib", float("nan"))
    except json.JSONDecodeError:
        return elapsed, float("nan")


def _median_process(argv: list[str], repeat: int, env: dict[str, str], before=None) -> tuple[float, float]:
    times, peaks = [], []
    for _ in range(repeat):
        if before:
            before()
        t, p = _timed_process(argv, env)
        times.append(t)
        peaks.append(p)
    return statistics.median(times), max(peaks)


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def _first_call_cost(env: dict[str, str], cache_dir: Path | None) -> float:
    code = ("import time, torch; s = time.perf_counter(); from ckptboard.core.stats import tensor_stats; "
            "tensor_stats(torch.randn(100000)); tensor_stats(torch.randn(100000).bfloat16()); "
            "print(time.perf_counter() - s)")
    env = dict(env, **({"NUMBA_CACHE_DIR": str(cache_dir)} if cache_dir else {}))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def _has_summarize() -> bool:
    try:
        import ckptboard.dashboard.commands.summarize  # noqa: F401
    except ImportError:
        return False
    return shutil.which("ckptboard") is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--gb", type=float, default=1.0, help="size of each synthetic checkpoint (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, medians printed (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every process (default 1)")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="fp32 checkpoint for the memory bound (0: skip)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the checkpoints (default: a tmp dir)")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out, e.g. tensorboard")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench_stats_", dir=args.dir))
    needed = (2 * args.gb + args.memory_gb) * 1.1e9
    free = shutil.disk_usage(work).free
    if free < needed:
        print(f"{work}: {free / 1e9:.1f} GB free, {needed / 1e9:.1f} GB needed; use --dir or a smaller --gb")
        return 1
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    methods = [m for m in METHODS if m not in args.skip.split(",")]
    me = [sys.executable, str(Path(__file__).resolve()), "--threads", str(args.threads)]
    try:
        print(f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} cores, work dir {work}")
        print(f"first call of tensor_stats in a fresh process (import + kernels): "
              f"cached {_first_call_cost(env, None):.2f} s, "
              f"cold compile {_first_call_cost(env, work / 'numba_cold'):.2f} s")
        _ours({"warm": torch.randn(10000), "warm16": torch.randn(10000).bfloat16()})  # load kernels here too
        import_torch = statistics.median(
            _timed_process([sys.executable, "-c", "import torch"], env)[0] for _ in range(max(3, args.repeat)))
        print(f"python -c 'import torch': {import_torch:.2f} s (subtracted from process times)")
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            run_dir = work / name
            path = run_dir / f"{name}.pt"
            size = write_transformer(path, int(args.gb * 1e9), dtype)
            _warm(path)
            print(f"\n== {name}: {size / 1e9:.2f} GB, {len(_load(path))} tensors ==")
            print(f"{'method':<12} {'in-process s':>12} {'x floor':>8} {'anon MiB':>9} | "
                  f"{'process s':>9} {'x floor':>8} {'anon MiB':>9}")
            rows = {}
            for method in methods:
                inproc, inmem = _median_in_process(method, path, args.repeat)
                proc, pmem = _median_process(me + ["--worker", method, str(path)], args.repeat, env)
                rows[method] = (inproc, inmem, proc - import_torch, pmem)
            if _has_summarize():
                cache = work / "cache"
                proc, _ = _median_process(
                    ["ckptboard", "summarize", str(run_dir), "--cache-dir", str(cache), "--workers", "1"],
                    args.repeat, env, before=lambda: shutil.rmtree(cache, ignore_errors=True))
                rows["summarize"] = (float("nan"), float("nan"), proc - import_torch, float("nan"))
            floor_in, _, floor_proc, _ = rows["floor"]
            for method, (inproc, inmem, proc, pmem) in rows.items():
                print(f"{method:<12} {inproc:>12.3f} {inproc / floor_in:>8.1f} {inmem:>9.0f} | "
                      f"{proc:>9.3f} {proc / floor_proc:>8.1f} {pmem:>9.0f}")
            if "tensorboard" in rows and "ours" in rows:
                print(f"tensorboard / ours: in-process {rows['tensorboard'][0] / rows['ours'][0]:.1f}x, "
                      f"process {rows['tensorboard'][2] / rows['ours'][2]:.1f}x; "
                      f"ours {size / rows['ours'][0] / 1e9:.2f} GB/s in-process")
            shutil.rmtree(run_dir)
        if args.memory_gb:
            path = work / "memory" / "big.pt"
            size = write_transformer(path, int(args.memory_gb * 1e9), torch.float32)
            _warm(path)
            proc, pmem = _timed_process(me + ["--worker", "ours", str(path)], env)
            print(f"\nmemory bound: ours over {size / 1e9:.2f} GB fp32 as a process: {proc - import_torch:.2f} s, "
                  f"peak anonymous memory {pmem:.0f} MiB above import torch")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
