"""Shard tasks on Dask: one checkpoint in 8 ``safetensors`` shards summarised on a LocalCluster of 2 workers (one
shard task per file, merged) vs 1 worker (one task), identical tables asserted.

    python benchmarks/bench_shards.py [--gb 8] [--repeats 3] [--shards 8]

The checkpoint is a Hugging Face sharded folder written by ``safetensors.torch.save_file`` (``model-0000X-of-0000N
.safetensors``, float32 seeded normal tensors of 64 MB, plus ``model.safetensors.index.json``) in a temp folder,
deleted at the end. Both clusters are started (and warmed on a small checkpoint, so that no worker's first-task
costs: importing torch, loading numba's kernels, are timed) before the runs; the runs alternate 1 worker, 2 workers,
``--repeats`` times, each into a fresh cache folder, and the figure is the median time of ``execute`` (plan excluded),
with the CPU seconds the workers and the client used meanwhile (what the split costs, and how many cores the run got
on a shared machine).
The file is read once before the runs, so all runs read from the page cache when it fits (the machine's memory is
printed). The tables of every run are compared fragment by fragment with the first 1-worker run's: bit-identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from _fixtures_shards import assert_same_fragments  # noqa: E402  (the tests' bit-for-bit comparison)

_TENSOR_BYTES = 64 << 20


def _write(folder: Path, gb: float, shards: int) -> int:
    """An HF sharded folder of ~``gb`` GB in ``shards`` files; returns its bytes."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    per_shard = max(1, round(gb * 1e9 / shards / _TENSOR_BYTES))
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"layers.{s}.w{i}": torch.randn(_TENSOR_BYTES // 4 // 4096, 4096, generator=gen)
                   for i in range(per_shard)}
        save_file(tensors, folder / name)
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * 4 for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    then = time.time() - 3600  # not taken for a checkpoint still being written
    for path in folder.iterdir():
        os.utime(path, (then, then))
    return total


def _warm(path: Path) -> None:
    for file in sorted(path.iterdir()):
        with open(file, "rb") as f:
            while f.read(64 << 20):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=8.0)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)  # the clusters' shutdown chatter

    from ckptboard.core.executors_dask import DaskExecutor
    from ckptboard.core.summarize import execute, plan, shard_tasks

    tmp = Path(tempfile.mkdtemp(prefix="bench_shards-"))
    try:
        root = tmp / "series"
        size = _write(root / "run" / "checkpoint-1", args.gb, args.shards)
        small = tmp / "warm"
        _write(small / "run" / "checkpoint-1", 0.1, 2)
        _warm(root / "run" / "checkpoint-1")
        print(f"{size / 1e9:.2f} GB in {args.shards} shards; {os.cpu_count()} cores; "
              f"load average {os.getloadavg()[0]:.2f} before; memory {_mem_gb():.0f} GB")
        clusters = {w: DaskExecutor(n_workers=w, dashboard_address=":0").start() for w in (1, 2)}
        try:
            for w, dask in clusters.items():
                # each worker's first-task costs, on the path it will take (shard tasks on 2 workers)
                execute(plan(small, cache_dir=tmp / f"warm-{w}"), dask, split=w > 1)
            times: dict[int, list[float]] = {1: [], 2: []}
            caches: dict[int, list[Path]] = {1: [], 2: []}
            cpus: dict[int, list[float]] = {1: [], 2: []}
            for r in range(args.repeats):
                for w in (1, 2):
                    cache = tmp / f"cache-{w}-{r}"
                    work = plan(root, cache_dir=cache)
                    parts = len(shard_tasks(work.tasks, clusters[w].parallelism))
                    cpu = _cpu_seconds(clusters[w])
                    start = time.perf_counter()
                    report = execute(work, clusters[w])
                    seconds = time.perf_counter() - start
                    cpu = _cpu_seconds(clusters[w]) - cpu
                    assert report.ok and report.computed == 1, report.failures
                    times[w].append(seconds)
                    cpus[w].append(cpu)
                    caches[w].append(cache)
                    print(f"  run {r + 1}, {w} worker(s), {parts} task(s): {seconds:.2f} s "
                          f"({size / 1e9 / seconds:.2f} GB/s), CPU {cpu:.2f} s ({cpu / seconds:.2f} cores), "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            for dask in clusters.values():
                dask.close()
        for cache in caches[1][1:] + caches[2]:
            assert_same_fragments(caches[1][0], cache)
        one, two = statistics.median(times[1]), statistics.median(times[2])
        print(f"median 1 worker {one:.2f} s, 2 workers {two:.2f} s: {one / two:.2f}x (target >= 1.7x); "
              f"tables identical in all {2 * args.repeats} runs")
        # On a machine shared with other work, the wall-clock ratio is what the cores give; the CPU time shows what
        # the split itself costs (the parts' extra listings and the merge) and how many cores the runs got.
        print(f"median CPU (workers + client) 1 worker {statistics.median(cpus[1]):.2f} s, 2 workers "
              f"{statistics.median(cpus[2]):.2f} s; cores used {statistics.median(c / t for c, t in zip(cpus[1], times[1])):.2f}"
              f" vs {statistics.median(c / t for c, t in zip(cpus[2], times[2])):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu_seconds(dask) -> float:
    """User + system CPU seconds so far of the cluster's worker processes and of this (client) process."""
    def used() -> float:
        t = os.times()
        return t.user + t.system

    workers = dask._client.run(used)  # one value per worker process
    return sum(workers.values()) + used()


def _mem_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1e6
    return 0.0


if __name__ == "__main__":
    main()
