"""Training layouts: listing a ~2 GB DCP checkpoint (8 shard files), ``summarize`` of the same tensors as DCP and as
one ``torch.save`` file side by side, and classification accuracy without ``--model`` on each layout.

    python benchmarks/bench_layouts.py [--gb 2.0] [--repeats 3] [--skip-accuracy]

The tensors (float32, seeded normal, 64 of equal size) are written once into a temp folder as ``whole/ckpt.pt``
(``torch.save``), ``dcp/step-1/`` (``dcp.save`` with ``FileSystemWriter(thread_count=8)``: 8 ``.distcp`` files,
one process, so each tensor is one chunk) and ``fsdp/step-1/`` (the same values as DTensors split by rows over 2
gloo ranks, as FSDP2 shards them: 8 files, each tensor in 2 chunks, summarised chunk by chunk and merged). Each measurement runs in a
fresh process ``--repeats`` times; reported are medians of the in-process time and of peak RSS (``VmHWM``) minus
that of a process that only imports ckptboard and torch. ``summarize`` uses a fresh cache folder each time. Statistics of the DCP ones are compared with
the file's column by column. Accuracy: the layouts' fixtures from ``tests/_fixtures_layouts.py`` (real libraries, or exact imitations for
DeepSpeed and Megatron), each tensor's (kind, trainable) against the real model's ``named_parameters()`` /
``named_buffers()`` and ``requires_grad``; ``unknown`` counts as wrong. The temp folder is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PROBE = r"""
import json, sys, time
import torch
import ckptboard.core.reader, ckptboard.core.summarize
mode, path, extra = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
result = {}
if mode == "list":
    from ckptboard.core.reader import open_checkpoint
    with open_checkpoint(path) as ckpt:
        rows = [(t.name, t.shape, t.dtype, t.nbytes) for t in ckpt.tensors]
    result = {"tensors": len(rows), "bytes": sum(r[3] for r in rows)}
elif mode == "summarize":
    from ckptboard.core.summarize import summarize
    report = summarize(path, cache_dir=extra)
    result = {"ok": report.ok, "tensors": report.tensors, "failures": [f.message for f in report.failures]}
seconds = time.perf_counter() - start
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_kib": int(status["VmHWM"].split()[0]), **result}))
"""


def _write(folder: Path, gb: float) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    import warnings

    n = 64
    per = int(gb * 1e9 / 4 / n)
    rows = 1024
    gen = torch.Generator().manual_seed(0)
    state = {f"layers.{i}.weight": torch.randn(rows, per // rows, generator=gen) for i in range(n)}
    (folder / "whole").mkdir()
    torch.save(state, folder / "whole" / "ckpt.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": state}, storage_writer=dcp.FileSystemWriter(folder / "dcp" / "step-1", thread_count=8))


def _fsdp_worker(rank: int, world: int, folder: str, port: int, gb: float) -> None:
    import os
    import warnings

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    n, rows = 64, 1024
    per = int(gb * 1e9 / 4 / n)
    gen = torch.Generator().manual_seed(0)
    state, whole = {}, {}
    for i in range(n):  # the same values as _write's, sharded by rows as FSDP2's fully_shard does
        full = torch.randn(rows, per // rows, generator=gen)
        state[f"layers.{i}.weight"] = distribute_tensor(full, mesh, [Shard(0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": state}, storage_writer=dcp.FileSystemWriter(Path(folder) / "fsdp" / "step-1",
                                                                       thread_count=8 // world))
    dist.destroy_process_group()


def _write_fsdp(folder: Path, gb: float, world: int = 2) -> None:
    """The same tensors as DTensors split by rows over ``world`` gloo ranks: 8 .distcp files, ``world`` chunks each."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(world, str(folder), port, gb), nprocs=world)


def _probe(mode: str, path: Path, extra: str = "-") -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, str(path), extra], check=True, capture_output=True,
                         text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _speed_and_memory(folder: Path, repeats: int) -> None:
    base = [_probe("none", folder) for _ in range(repeats)]
    base_kib = _median(base, "peak_kib")
    shards = sorted((folder / "dcp" / "step-1").glob("*.distcp"))
    listing = [_probe("list", folder / "dcp" / "step-1") for _ in range(repeats)]
    print(f"baseline process (python + torch + ckptboard imports): peak RSS {base_kib / 1024:.0f} MiB")
    print(f"listing DCP ({len(shards)} .distcp files, {listing[0]['bytes'] / 1e9:.2f} GB, {listing[0]['tensors']} "
          f"tensors): {_median(listing, 'seconds'):.3f} s, "
          f"peak RSS +{(_median(listing, 'peak_kib') - base_kib) / 1024:.0f} MiB")
    for label, root in (("torch.save file", folder / "whole"), ("DCP (8 shards)", folder / "dcp"),
                        ("DCP FSDP 2 ranks", folder / "fsdp")):
        runs = []
        for i in range(repeats):
            cache = folder / f"cache-{root.name}-{i}"
            runs.append(_probe("summarize", root, str(cache)))
            assert runs[-1]["ok"], runs[-1]
        print(f"summarize {label:16s}: {_median(runs, 'seconds'):.2f} s, "
              f"peak RSS +{(_median(runs, 'peak_kib') - base_kib) / 1024:.0f} MiB")
    _compare_statistics(folder)


def _compare_statistics(folder: Path) -> None:
    from ckptboard.core.load import load_stats

    whole = load_stats(folder / "whole", cache_dir=folder / "cache-whole-0").tensors.set_index("name").sort_index()
    columns = [c for c in whole.columns if c.startswith(("mean", "std", "min", "max", "abs_mean", "norm", "zeros",
                                                          "nans", "p", "numel"))]
    moments = [c for c in columns if c in ("mean", "std", "abs_mean", "norm")]
    exact = [c for c in columns if c not in moments]
    for name in ("dcp", "fsdp"):
        other = load_stats(folder / name, cache_dir=folder / f"cache-{name}-0").tensors.set_index("name").sort_index()
        same = whole[exact].equals(other[exact])
        # FSDP's tensors are in 2 chunks, merged from per-chunk sums: the float moments are the same sums added in
        # another order (README: Statistics, tensors in parts); one-chunk tensors give identical moments.
        rest = [c for c in moments if c != "mean"]
        rel = ((whole[rest] - other[rest]).abs() / whole[rest].abs()).max().max()
        rms = (whole["mean"] ** 2 + whole["std"] ** 2) ** 0.5  # a mean near 0: its error is one of the RMS
        mean = ((whole["mean"] - other["mean"]).abs() / rms).max()
        print(f"statistics of {name} vs the file's, {len(whole)} tensors: counts, extremes and percentiles "
              f"({len(exact)} columns) identical: {same}; std/abs_mean/norm max relative difference {rel:.1e}, "
              f"mean's max difference {mean:.1e} of the RMS")


def _accuracy() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import _fixtures_layouts as fx

    from ckptboard.core.classify import classify
    from ckptboard.core.reader import open_checkpoint

    def truth_of(model, rename=lambda n: n):
        out = {rename(n): ("parameter", "true" if p.requires_grad else "false")
               for n, p in model.named_parameters(remove_duplicate=False)}
        out.update({rename(n): ("buffer", "false") for n, _ in model.named_buffers()})
        return out

    def score(path, truth, key=lambda t: t.name):
        with open_checkpoint(path) as ckpt:
            classify(ckpt)
            got = {key(t): (str(t.kind), str(t.trainable)) for t in ckpt.tensors}
        right = sum(truth.get(k) == v for k, v in got.items())
        return right, len(got)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = fx.hf_trainer_run(tmp / "hf")
        results["HF Trainer checkpoint-4"] = score(tmp / "hf" / "checkpoint-4", truth_of(model))
        first, second = fx.accelerate_run(tmp / "acc")
        truth = {("model", k): v for k, v in truth_of(first).items()}
        truth.update({("model_1", k): v for k, v in truth_of(second).items()})
        results["accelerate checkpoint_2"] = score(tmp / "acc" / "checkpoints" / "checkpoint_2", truth,
                                                   key=lambda t: (t.group, t.name))
        peft = fx.peft_adapter(tmp / "lora")
        results["PEFT LoRA"] = score(tmp / "lora", truth_of(peft, lambda n: n.replace(".default", "")))
        model = fx.dcp_single_save(tmp / "dcp")
        results["DCP (dcp.save model+optim)"] = score(tmp / "dcp", truth_of(model))
        for stage in (2, 3):
            model = fx.deepspeed_checkpoint(tmp / f"ds{stage}", "global_step1", stage=stage)
            results[f"DeepSpeed ZeRO-{stage} (imitation)"] = score(tmp / f"ds{stage}" / "global_step1", truth_of(model))
        sds = fx.megatron_checkpoint(tmp / "mg", 100)
        truth = {(f"mp_rank_{r:02d}/model", n): ("parameter", "true") for r, sd in enumerate(sds) for n in sd}
        results["Megatron TP=2 (imitation)"] = score(tmp / "mg" / "iter_0000100", truth,
                                                     key=lambda t: (t.group, t.name))
        path = tmp / "nano.pt"
        model = fx.nanogpt_checkpoint(path)
        results["nanoGPT (two param groups)"] = score(path, truth_of(model), key=lambda t: t.name)
    for label, (right, total) in results.items():
        print(f"accuracy without --model, {label:30s}: {right}/{total} = {right / total:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    if not args.skip_speed:
        folder = Path(tempfile.mkdtemp(prefix="bench_layouts_"))
        try:
            _write(folder, args.gb)
            _write_fsdp(folder, args.gb)
            _speed_and_memory(folder, args.repeats)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if not args.skip_accuracy:
        _accuracy()


if __name__ == "__main__":
    main()
