"""Start-up costs of a fresh process (run by hand), this tree beside ``--baseline DIR`` (a checkout of ckptboard):

- ``ckptboard --help`` and ``python -c "import torch"``;
- the numba kernels' start-up beyond ``import torch``, in phases: numba's import, its BLAS probe (``numba.np.
  arraymath`` importing ``scipy.linalg``) and target initialisation with the cached machine code loaded (first
  call), plain numba beside this tree's ``_kernels`` (which skips the scipy imports);
- a whole-process ``ckptboard summarize`` of one ``--gb`` GB fp32 checkpoint (``torch.save``, page cache warm) into
  a fresh cache, beyond ``import torch``;
- with ``--tensorboard``: TensorBoard's ``add_histogram`` process over the same checkpoint (``torch.load`` with
  ``mmap``, one call per tensor) beyond ``import torch``, and its ratio to the summarize process.

Every figure is the median of ``--repeats`` rounds, wall seconds and CPU seconds (the child's user + sys: steadier
on a shared machine). An implementation is chosen by a ``ckptboard`` link first on ``PYTHONPATH``.

Usage: ``python benchmarks/bench_startup.py [--gb 1] [--repeats 5] [--baseline DIR] [--dir DIR] [--tensorboard]
[--tb-repeats 3]``
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

_PHASES = r"""
import json, sys
from time import process_time as clock
import torch, numpy as np
t0 = clock()
if sys.argv[1] == "ours":
    from ckptboard.core import _kernels
    t1 = t2 = clock()
else:
    import numba
    t1 = clock()
    from numba.np import arraymath  # the BLAS probe: imports scipy.linalg.cython_blas
    t2 = clock()
    from ckptboard.core import _kernels
x = np.ones(16, np.float32)
t3 = clock()
_kernels._moments_block(x, x.view(np.int32), 0.0)
t4 = clock()
if sys.argv[1] == "ours":  # _kernels imports numba and loads the target's registries (without scipy, cffi)
    phases = {"kernels import (numba + target registries)": t1 - t0, "first call (cached machine code)": t4 - t3}
else:
    phases = {"numba import": t1 - t0, "BLAS probe": t2 - t1, "first call (target init + cached machine code)": t4 - t3}
print(json.dumps({**phases, "total": t4 - t0, "scipy imported": "scipy" in sys.modules}))
"""


# TensorBoard's way to the same histograms: load the checkpoint, one add_histogram per tensor (bf16 upcast).
_TENSORBOARD = r"""
import sys, tempfile
import torch
from torch.utils.tensorboard import SummaryWriter
state = torch.load(sys.argv[1], map_location="cpu", mmap=True, weights_only=True)
with tempfile.TemporaryDirectory() as logdir, SummaryWriter(logdir) as writer:
    for name, t in state.items():
        writer.add_histogram(name, t.float() if t.dtype == torch.bfloat16 else t, 0)
"""


def _env(impl: Path) -> dict[str, str]:
    link_dir = Path(tempfile.mkdtemp(prefix="ckptboard-impl-"))
    (link_dir / "ckptboard").symlink_to(impl)
    return {**os.environ, "PYTHONPATH": str(link_dir) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of ``cmd`` and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def measure_round(impl: Path, ckpt_dir: Path, rounds: dict[str, list[float]]) -> None:
    """One round of every figure of ``impl``, appended to ``rounds``."""
    env = _env(impl)
    cli = [sys.executable, "-m", "ckptboard.dashboard.cli"]

    def add(key: str, value: float) -> None:
        rounds.setdefault(key, []).append(value)

    add("load", os.getloadavg()[0])
    wall, cpu, _ = _timed([sys.executable, "-c", "import torch"], env)
    add("import torch: wall", wall)
    add("import torch: cpu", cpu)
    wall, cpu, _ = _timed([*cli, "--help"], env)
    add("ckptboard --help: wall", wall)
    add("ckptboard --help: cpu", cpu)
    for mode in ("plain numba", "ours"):
        _, _, out = _timed([sys.executable, "-c", _PHASES, "ours" if mode == "ours" else "plain"], env)
        for key, value in json.loads(out).items():
            add(f"kernels ({mode}): {key} cpu", float(value))
    cache = Path(tempfile.mkdtemp(prefix="ckptboard-cache-"))
    wall, cpu, _ = _timed([*cli, "summarize", str(ckpt_dir), "--workers", "1", "--cache-dir", str(cache)], env)
    shutil.rmtree(cache, ignore_errors=True)
    add("summarize 1 file: wall", wall)
    add("summarize 1 file: cpu", cpu)


def medians(rounds: dict[str, list[float]]) -> dict[str, float]:
    out = {k: statistics.median(v) for k, v in rounds.items() if k != "load"}
    out["load average (1 min), median"] = statistics.median(rounds["load"])
    out["summarize beyond import torch: wall"] = out["summarize 1 file: wall"] - out["import torch: wall"]
    out["summarize beyond import torch: cpu"] = out["summarize 1 file: cpu"] - out["import torch: cpu"]
    return out


def tensorboard_process(path: Path, repeats: int) -> dict[str, float]:
    """TensorBoard's ``add_histogram`` over every tensor of ``path`` as a process, beyond ``import torch``
    (medians; the two alternate round by round)."""
    env = dict(os.environ)
    rounds: dict[str, list[float]] = {"torch wall": [], "torch cpu": [], "tb wall": [], "tb cpu": []}
    for _ in range(repeats):
        wall, cpu, _ = _timed([sys.executable, "-c", "import torch"], env)
        rounds["torch wall"].append(wall)
        rounds["torch cpu"].append(cpu)
        wall, cpu, _ = _timed([sys.executable, "-c", _TENSORBOARD, str(path)], env)
        rounds["tb wall"].append(wall)
        rounds["tb cpu"].append(cpu)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    return {"tensorboard add_histogram beyond import torch: wall": med["tb wall"] - med["torch wall"],
            "tensorboard add_histogram beyond import torch: cpu": med["tb cpu"] - med["torch cpu"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--dir", type=Path, default=None, help="where the checkpoint goes (default: a temp folder)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also time TensorBoard's add_histogram process over the same checkpoint, and the ratio")
    parser.add_argument("--tb-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from _synth import write_transformer

    folder = args.dir or Path(tempfile.mkdtemp(prefix="ckptboard-startup-"))
    ckpt_dir = folder / "run"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / "model.pt"
    if not path.exists():
        write_transformer(path, int(args.gb * 1e9))
    path.read_bytes()  # page cache warm
    impls = {"this tree": HERE} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    rounds: dict[str, dict[str, list[float]]] = {name: {} for name in impls}
    for _ in range(args.repeats):  # the implementations alternate round by round: load drifts hit both alike
        for name, impl in impls.items():
            measure_round(impl, ckpt_dir, rounds[name])
    results = {name: medians(r) for name, r in rounds.items()}
    if args.tensorboard:
        tb = tensorboard_process(path, args.tb_repeats)
        for name, r in results.items():
            r.update(tb)
            r["tensorboard / summarize beyond import torch: wall"] = (
                tb["tensorboard add_histogram beyond import torch: wall"] / r["summarize beyond import torch: wall"])
            r["tensorboard / summarize beyond import torch: cpu"] = (
                tb["tensorboard add_histogram beyond import torch: cpu"] / r["summarize beyond import torch: cpu"])
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"{path.stat().st_size / 1e9:.2f} GB fp32; medians of {args.repeats} rounds, seconds")
    print(f"{'':60s}" + "".join(f"{name:>12s}" for name in results))
    for key in keys:
        print(f"{key:60s}" + "".join(f"{float(r.get(key, float('nan'))):12.3f}" for r in results.values()))
    if args.dir is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
