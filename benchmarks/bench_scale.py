"""Scale: a synthetic series of many small tensors (metadata-heavy), summarised and drawn, this tree beside another.

Writes ``--runs`` × ``--checkpoints`` safetensors files of ``--tensors`` small fp32 tensors each (transformer-like
names, so modules exist) into ``--work``, then for each implementation (this tree, and ``--baseline DIR``, e.g. a
``git archive main`` of the repository, when given) measures, each phase in a fresh process:

- first ``ckptboard summarize ROOT --workers 2`` (``--workers``) into an empty cache: wall seconds and tensors per
  second;
- an unchanged re-run: wall seconds beyond ``python -c "import torch"`` (median of ``--repeats``);
- the app under AppTest (``--app``): the first render of a cold server, then a switch to every view, median and
  max over views, and the process's peak RSS (``ru_maxrss``: the server's own memory, AppTest included);
- ``ckptboard --help`` wall seconds (median of ``--repeats``).

An implementation is chosen by putting a folder holding a ``ckptboard`` link to it first on ``PYTHONPATH`` (the
editable install's finder comes after ``sys.path``). Prints one line per figure, implementations side by side.

Usage: ``python benchmarks/bench_scale.py --work DIR [--runs 3] [--checkpoints 100] [--tensors 2000]
[--baseline DIR] [--repeats 3] [--rounds 3] [--workers 2] [--app]``; ``--rounds`` alternates this tree and the
baseline round by round and prints medians, with the 1-minute load average before each measurement.
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

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parents[1]

_APP_PROBE = r"""
import json, resource, sys, time
from pathlib import Path
from streamlit.testing.v1 import AppTest
import ckptboard
from ckptboard.dashboard.views import View
app = Path(list(ckptboard.__path__)[0]) / "dashboard" / "app.py"
at = AppTest.from_file(str(app), default_timeout=600)
at.session_state["app_argv"] = [sys.argv[1], "--cache-dir", sys.argv[2]]
t = time.perf_counter(); at.run(); first = time.perf_counter() - t
assert not at.exception, at.exception
views = {}
for view in View:
    at.session_state["view"] = view
    t = time.perf_counter(); at.run(); views[str(view)] = time.perf_counter() - t
    assert not at.exception, (view, at.exception)
print(json.dumps({"first": first, "views": views, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "impl": str(Path(list(ckptboard.__path__)[0]).resolve())}))
"""


def write_series(root: Path, runs: int, checkpoints: int, tensors: int, seed: int = 0) -> int:
    """The series (skipped when its marker says it is there); the number of tensors written."""
    marker = root / f"series-{runs}x{checkpoints}x{tensors}.done"
    total = runs * checkpoints * tensors
    if marker.exists():
        return total
    shutil.rmtree(root, ignore_errors=True)
    gen = torch.Generator().manual_seed(seed)
    names = [f"layers.{i // 8}.{('attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.up', 'mlp.down', 'ln1', 'ln2')[i % 8]}"
             f".weight" for i in range(tensors)]
    for r in range(runs):
        state = {n: torch.randn(8, 16, generator=gen) for n in names}
        run = root / f"run{r}"
        run.mkdir(parents=True)
        for c in range(checkpoints):
            for t in state.values():
                t.add_(torch.randn(t.shape, generator=gen), alpha=1e-3)
            save_file(state, str(run / f"step_{(c + 1) * 100:06d}.safetensors"))
    marker.touch()
    return total


def _env(impl: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if impl is not None:
        link_dir = Path(tempfile.mkdtemp(prefix="ckptboard-impl-"))
        (link_dir / "ckptboard").symlink_to(impl)
        env["PYTHONPATH"] = str(link_dir) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    return _timed(cmd, env)[0]


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys of the child and its workers: steadier on a shared machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(impl: Path | None, root: Path, total: int, repeats: int, app: bool, workers: int = 2) -> dict[str, float]:
    env = _env(impl)
    cli = [sys.executable, "-m", "ckptboard.dashboard.cli"]
    cache = Path(tempfile.mkdtemp(prefix="ckptboard-cache-"))
    out: dict[str, float] = {}
    try:
        first, first_cpu = _timed([*cli, "summarize", str(root), "--workers", str(workers), "--cache-dir", str(cache)],
                                  env)
        out["first summarize (s)"] = first
        out["first summarize (tensors/s)"] = total / first
        out["first summarize CPU, all processes (s)"] = first_cpu
        out["first summarize (tensors per CPU second)"] = total / first_cpu
        torch_runs = [_timed([sys.executable, "-c", "import torch"], env) for _ in range(repeats)]
        reruns = [_timed([*cli, "summarize", str(root), "--cache-dir", str(cache)], env) for _ in range(repeats)]
        out["unchanged re-run beyond import torch (s)"] = (statistics.median(r[0] for r in reruns)
                                                           - statistics.median(t[0] for t in torch_runs))
        out["unchanged re-run beyond import torch, CPU (s)"] = (statistics.median(r[1] for r in reruns)
                                                                - statistics.median(t[1] for t in torch_runs))
        helps = [_timed([*cli, "--help"], env) for _ in range(repeats)]
        out["ckptboard --help (s)"] = statistics.median(h[0] for h in helps)
        out["ckptboard --help, CPU (s)"] = statistics.median(h[1] for h in helps)
        if app:
            done = subprocess.run([sys.executable, "-c", _APP_PROBE, str(root), str(cache)], env=env, check=True,
                                  capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            out["app first render (s)"] = result["first"]
            out["app view switch, median (s)"] = statistics.median(result["views"].values())
            worst = max(result["views"], key=result["views"].get)
            out[f"app view switch, max (s) [{worst}]"] = result["views"][worst]
            out["app peak RSS (MB)"] = result["rss_mb"]
            for view, seconds in result["views"].items():
                out[f"  view {view} (s)"] = seconds
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=100)
    parser.add_argument("--tensors", type=int, default=2000)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout of ckptboard to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--app", action="store_true", help="also measure the app under AppTest")
    parser.add_argument("--rounds", type=int, default=1, help="rounds alternating the implementations (medians)")
    parser.add_argument("--workers", type=int, default=2, help="--workers of the first summarize")
    args = parser.parse_args(argv)
    root = args.work / "series"
    total = write_series(root, args.runs, args.checkpoints, args.tensors)
    print(f"series: {args.runs} runs x {args.checkpoints} checkpoints x {args.tensors} tensors = {total:,} tensors",
          flush=True)
    impls = {"this tree": HERE} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    # Rounds alternate the implementations so that load drifts on a shared machine hit both alike; medians printed.
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in impls}
    for _ in range(args.rounds):
        for name, path in impls.items():
            load = os.getloadavg()[0]
            figures = measure(path, root, total, args.repeats, args.app, args.workers)
            figures["load average (1 min) before"] = load
            rounds[name].append(figures)
            print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if not k.startswith("  ")),
                  flush=True)
    results = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rounds.items()}
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"medians of {args.rounds} rounds")
    print(f"{'':48s}" + "".join(f"{name:>14s}" for name in results))
    for key in keys:
        print(f"{key:48s}" + "".join(f"{r.get(key, float('nan')):14.3f}" for r in results.values()))
    if args.baseline:
        ours, base = results["this tree"], results["baseline"]
        for key in ("first summarize (tensors/s)", "first summarize (tensors per CPU second)"):
            print(f"{key}: {ours[key] / base[key]:.2f}x the baseline's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
