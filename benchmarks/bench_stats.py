"""Speed and memory of the statistics engine against the floor, TensorBoard and NumPy (run by hand).

Writes synthetic GPT-like checkpoints (``--gb`` GB fp32 and bf16, ``torch.save``) to a temporary folder, reads them
once so the page cache is warm, then times each method over every tensor, ``--repeat`` times, both in this process
and as separate processes (``python bench_stats.py --worker METHOD FILE``):

- ``floor``: ``torch.load(mmap=True)`` and one ``sum()`` per tensor (every byte touched once);
- ``ours``: :func:`ckptboard.core.stats.tensor_stats` per tensor;
- ``tensorboard``: ``SummaryWriter.add_histogram`` per tensor (bf16 upcast with ``.float()``, as a user must);
- ``numpy``: mean/std/min/max, ``np.histogram(bins=256)`` and ``np.percentile`` at the schema's percentiles;
- ``summarize`` (process only, when the command exists): ``ckptboard summarize DIR --workers 1`` into a fresh cache.

Each round runs every method once (in-process, then as a process) so that load drifts on a shared machine hit
all alike; medians over rounds are printed, wall and CPU (this thread's, or the child's user + sys). Process
times have the median of ``python -c "import torch"`` (run in the same rounds) subtracted. Peak anonymous memory
is RssAnon (not file-backed mmap pages) sampled every 2 ms, above its value after ``import torch``.
``--memory-gb 4`` also runs ``ours`` once as a process over a 4 GB fp32 checkpoint for the memory bound. torch
runs with ``--threads`` threads.

Usage: ``python benchmarks/bench_stats.py [--gb 1] [--repeat 3] [--threads 1] [--memory-gb 4] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _in_process(method: str, path: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds of this thread (the sampler excluded), peak anonymous MiB."""
    with _PeakAnon() as mem:
        wall, cpu = time.perf_counter(), time.thread_time()
        _RUN[method](_load(path))
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return wall, cpu, mem.peak_mib


def _process(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + sys) and reported peak anonymous MiB of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = out.stdout.strip().splitlines()
    try:
        peak = json.loads(lines[-1]).get("peak_anon_mib", float("nan")) if lines else float("nan")
    except json.JSONDecodeError:
        peak = float("nan")
    return wall, cpu, peak


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


def _report(runs: dict[str, list[tuple]], size: int) -> None:
    """Medians per method: in-process wall/CPU, process wall/CPU minus ``import torch``, ratios to the floor."""
    med = {m: [statistics.median(r[i] for r in rows) for i in range(6)] for m, rows in runs.items()}
    peak = {m: (max(r[2] for r in rows), max(r[5] for r in rows)) for m, rows in runs.items()}
    base_wall, base_cpu = med["import torch"][3], med["import torch"][4]
    for m in med:
        med[m][3] -= base_wall
        med[m][4] -= base_cpu
    f = med["floor"]
    print(f"import torch process: {base_wall:.2f} s wall, {base_cpu:.2f} s CPU (subtracted below)")
    print(f"{'method':<12} {'in-process wall':>15} {'cpu':>7} {'x floor':>13} {'anon MiB':>8} | "
          f"{'process wall':>12} {'cpu':>7} {'x floor':>13} {'anon MiB':>8}")
    for m, (w, c, _, pw, pc, _) in med.items():
        if m == "import torch":
            continue
        print(f"{m:<12} {w:>15.3f} {c:>7.3f} {w / f[0]:>6.1f} {c / f[1]:>6.1f} {peak[m][0]:>8.0f} | "
              f"{pw:>12.3f} {pc:>7.3f} {pw / f[3]:>6.1f} {pc / f[4]:>6.1f} {peak[m][1]:>8.0f}")
    if "tensorboard" in med and "ours" in med:
        tb, ours = med["tensorboard"], med["ours"]
        print(f"tensorboard / ours: in-process {tb[0] / ours[0]:.0f}x wall, {tb[1] / ours[1]:.0f}x CPU; "
              f"process {tb[3] / ours[3]:.1f}x wall, {tb[4] / ours[4]:.1f}x CPU; "
              f"ours {size / ours[0] / 1e9:.2f} GB/s in-process wall")


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
    nan = float("nan")
    try:
        print(f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}, work dir {work}")
        print(f"first call of tensor_stats in a fresh process (import + kernels): "
              f"cached {_first_call_cost(env, None):.2f} s, "
              f"cold compile {_first_call_cost(env, work / 'numba_cold'):.2f} s")
        _ours({"warm": torch.randn(10000), "warm16": torch.randn(10000).bfloat16()})  # load kernels here too
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            run_dir = work / name
            path = run_dir / f"{name}.pt"
            size = write_transformer(path, int(args.gb * 1e9), dtype)
            _warm(path)
            print(f"\n== {name}: {size / 1e9:.2f} GB, {len(_load(path))} tensors, {args.repeat} interleaved rounds ==")
            runs: dict[str, list[tuple]] = {}
            for _ in range(args.repeat):  # one round runs everything once, so that load drifts hit all alike
                runs.setdefault("import torch", []).append(
                    (nan, nan, nan) + _process([sys.executable, "-c", "import torch"], env))
                for method in methods:
                    runs.setdefault(method, []).append(
                        _in_process(method, path) + _process(me + ["--worker", method, str(path)], env))
                if _has_summarize():
                    cache = work / "cache"
                    shutil.rmtree(cache, ignore_errors=True)
                    argv = ["ckptboard", "summarize", str(run_dir), "--cache-dir", str(cache), "--workers", "1"]
                    runs.setdefault("summarize", []).append((nan, nan, nan) + _process(argv, env))
            _report(runs, size)
            shutil.rmtree(run_dir)
        if args.memory_gb:
            path = work / "memory" / "big.pt"
            size = write_transformer(path, int(args.memory_gb * 1e9), torch.float32)
            _warm(path)
            wall, cpu, peak = _process(me + ["--worker", "ours", str(path)], env)
            print(f"\nmemory bound: ours over {size / 1e9:.2f} GB fp32 as a process: {wall:.2f} s wall, "
                  f"{cpu:.2f} s CPU (import torch included), peak anonymous memory {peak:.0f} MiB above import torch")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
