"""A DeepSpeed ZeRO-3 checkpoint summarised as one task (each weight's rank slices read one at a time) and as one
shard task per rank's optim-states file on 2 local workers: median time and peak memory, identical tables asserted.

    python benchmarks/bench_zero3.py [--gb 1] [--world 4] [--repeats 3] [--code DIR]

The folder ``run/global_step1/`` is written as ``deepspeed/runtime/engine.py`` writes it (the tests' fixture
imitation: ``zero_pp_rank_R_mp_rank_00_model_states.pt`` with ``param_shapes`` and empty placeholders,
``zero_pp_rank_R_mp_rank_00_optim_states.pt`` with ``fp32_flat_groups``; ``tests/_fixtures_layouts.py``), of
seeded normal fp32 weights of 4096 x 4096 (64 MB), in a temp folder deleted at the end, and read once before the
runs (page cache). Each run is a fresh ``python`` process that imports torch and ckptboard, summarises a tiny
warm-up checkpoint (one 128 x 128 weight over 2 ranks), then times ``execute`` (plan excluded). Its peak RSS is
reset just before ``execute`` (``/proc/self/clear_refs``) and read after (``VmHWM``): ``execute``'s own, reported
above the RSS before; worker processes' peak is their whole ``ru_maxrss``. ``--code DIR`` runs another checkout's
``ckptboard`` (an exported older commit, for the before figure: the one-task path only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

_SIDE = 4096

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from ckptboard.core.executors import LocalExecutor
from ckptboard.core.summarize import execute, plan
root, warm, cache = (Path(a) for a in sys.argv[1:4])
workers, split = int(sys.argv[4]), sys.argv[5] == "1"
execute(plan(warm, cache_dir=cache / "warm"), LocalExecutor(1), split=False)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
work = plan(root, cache_dir=cache / "main")
start = time.perf_counter()
report = execute(work, LocalExecutor(workers), split=split)
seconds = time.perf_counter() - start
assert report.ok and report.computed == 1, report.failures
print(json.dumps({"seconds": seconds, "before_kb": before,
                  "self_kb": status("VmHWM"),
                  "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _write(folder: Path, params: int, world: int, seed: int = 0, side: int = _SIDE) -> int:
    """A ZeRO-3 ``global_step`` folder of ``params`` side x side fp32 weights over ``world`` ranks; its bytes."""
    import torch
    from _fixtures_layouts import ZeroStageEnum, deepspeed_pickling

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    names = [f"layers.{i}.weight" for i in range(params)]
    numel = side * side
    per = math.ceil(numel / world)
    flats = [[] for _ in range(world)]
    for _ in names:
        w = torch.randn(numel, generator=gen)
        w = torch.cat([w, torch.zeros(per * world - numel)])
        for rank in range(world):
            flats[rank].append(w[rank * per : (rank + 1) * per].clone())
        del w
    common = dict(buffer_names=[], optimizer=None, param_shapes=[OrderedDict((n, torch.Size([side, side]))
                                                                              for n in names)],
                  frozen_param_shapes=OrderedDict(), shared_params={}, lr_scheduler=None, skipped_steps=0,
                  global_steps=1, global_samples=8, dp_world_size=world, mp_world_size=1,
                  ds_config={"zero_optimization": {"stage": 3}}, ds_version="0.16.4")
    with deepspeed_pickling():
        for rank in range(world):
            module = OrderedDict((n, torch.empty(0)) for n in names)
            torch.save(dict(module=module, frozen_param_fragments=OrderedDict(), **common),
                       folder / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
            flat = torch.cat(flats[rank])
            flats[rank] = []
            state = {"zero_stage": ZeroStageEnum(3), "partition_count": world, "fp32_flat_groups": [flat],
                     "optimizer_state_dict": {"state": {}, "param_groups": [{"params": [0]}]}}
            torch.save({"optimizer_state_dict": state, "ds_version": "0.16.4"},
                       folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
            del flat
    then = time.time() - 3600  # not taken for a checkpoint still being written
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (then, then))
    return sum(p.stat().st_size for p in folder.iterdir())


def _run(code: Path, root: Path, warm: Path, cache: Path, workers: int, split: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(warm), str(cache), str(workers),
                          "1" if split else "0"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--code", type=Path, default=None, help="a checkout whose ckptboard to time (one task only)")
    args = parser.parse_args()
    from _fixtures_shards import assert_same_fragments

    tmp = Path(tempfile.mkdtemp(prefix="bench_zero3-"))
    try:
        params = max(1, round(args.gb * 1e9 / (_SIDE * _SIDE * 4)))
        size = _write(tmp / "series" / "run" / "global_step1", params, args.world)
        _write(tmp / "warm" / "run" / "global_step1", 1, 2, seed=1, side=128)  # the per-slice path, tiny
        for path in (tmp / "series" / "run" / "global_step1").iterdir():
            with open(path, "rb") as f:
                while f.read(64 << 20):
                    pass
        code = tmp / "code"
        code.mkdir()
        (code / "ckptboard").symlink_to(args.code.resolve() if args.code else REPO)
        modes = [("one task", 1, False)] + ([] if args.code else [(f"{args.world} shard tasks, 2 workers", 2, True)])
        print(f"{size / 1e9:.2f} GB: {params} weights of {_SIDE}x{_SIDE} fp32 over {args.world} ranks; code "
              f"{args.code or REPO}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
        results: dict[str, list[dict]] = {m: [] for m, _, _ in modes}
        for r in range(args.repeats):
            for name, workers, split in modes:
                got = _run(code, tmp / "series", tmp / "warm", tmp / f"cache-{workers}-{r}", workers, split)
                results[name].append(got)
                print(f"  run {r + 1}, {name}: {got['seconds']:.2f} s, peak RSS {got['self_kb'] / 1024:.0f} MiB "
                      f"(before execute {got['before_kb'] / 1024:.0f} MiB), workers' peak "
                      f"{got['children_kb'] / 1024:.0f} MiB", flush=True)
        caches = sorted(tmp.glob("cache-*"))
        for cache in caches[1:]:
            assert_same_fragments(caches[0] / "main", cache / "main")
        for name, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            above = statistics.median(r["self_kb"] - r["before_kb"] for r in runs) / 1024
            workers = statistics.median(r["children_kb"] for r in runs) / 1024
            print(f"median {name}: {seconds:.2f} s ({size / 1e9 / seconds:.2f} GB/s), peak RSS of execute above the "
                  f"warm process {above:.0f} MiB, of a worker process (whole) {workers:.0f} MiB")
        print(f"tables identical in all {len(caches)} runs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
