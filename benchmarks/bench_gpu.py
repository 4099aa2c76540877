"""The CUDA statistics path on a real GPU: same tables as the CPU, and its throughput from the page cache (by hand).

Writes a synthetic GPT-like ``--gb`` GB fp32 checkpoint (``torch.save``) and a bf16 one, reads each once so the page
cache is warm, then per dtype:

- ``tensor_stats`` over every tensor on ``cuda`` (records mapped from the file, staged through pinned memory), and on
  ``cpu`` once, the rows compared (the CUDA path accumulates in float64 like the CPU one: equal to 1e-9 relative,
  histograms identical);
- ``summarize(device="cuda")`` into a fresh cache ``--repeat`` times (median GB/s), and ``summarize(device="cpu",
  workers=N)`` once; the two caches' tables compared with ``load_stats`` (rtol 1e-5, as tests/test_summarize.py does).

Prints one JSON object. Needs a CUDA device. Usage:
``python benchmarks/bench_gpu.py [--gb 4] [--repeat 3] [--cpu-workers 8] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synth import write_transformer  # noqa: E402


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def _stats_pass(path: Path, device: str) -> tuple[float, list[dict], list[list[int]]]:
    from ckptboard.core.reader import open_checkpoint
    from ckptboard.core.stats import tensor_stats

    rows, hists = [], []
    start = time.perf_counter()
    with open_checkpoint(path) as ckpt:  # records stay on the CPU (mapped); tensor_stats stages them to the device
        for info in ckpt.tensors:
            s = tensor_stats(ckpt.load(info), device=device)
            rows.append(s.as_row())
            hists.append(s.histogram.counts.tolist())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, rows, hists


def _rows_equal(a: list[dict], b: list[dict], rel: float) -> tuple[bool, float]:
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, float) and isinstance(vb, float):
                if va != va and vb != vb:
                    continue
                denom = max(abs(va), abs(vb), 1e-300)
                worst = max(worst, abs(va - vb) / denom)
            elif va != vb:
                return False, float("inf")
    return worst <= rel, worst


def _tables_equal(root: Path, cache_a: Path, cache_b: Path) -> dict:
    import pandas as pd

    from ckptboard.core.load import load_stats

    a, b = load_stats(root, cache_dir=cache_a), load_stats(root, cache_dir=cache_b)
    out = {}
    for name in ("tensors", "updates", "batchnorm", "events", "histograms"):
        fa, fb = getattr(a, name, None), getattr(b, name, None)
        if fa is None or fb is None:
            continue
        try:
            pd.testing.assert_frame_equal(fa, fb, check_exact=False, rtol=1e-5)
            out[name] = f"equal ({len(fa)} rows)"
        except AssertionError as e:
            out[name] = f"DIFFERENT: {str(e)[:300]}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu-workers", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device")
    from ckptboard.core.summarize import summarize

    base = Path(tempfile.mkdtemp(dir=args.dir))
    result: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "gb": args.gb}
    try:
        for dtype in (torch.float32, torch.bfloat16):
            tag = str(dtype).removeprefix("torch.")
            root = base / tag
            t0 = time.perf_counter()
            size = write_transformer(root / "step_1000.pt", int(args.gb * 1e9), dtype)
            path = root / "step_1000.pt"
            _warm(path)
            r: dict = {"bytes": size, "write_s": round(time.perf_counter() - t0, 1)}
            _stats_pass(path, "cuda")  # warm-up: CUDA context, pinned buffers
            cuda_s, cuda_rows, cuda_h = [], None, None
            for _ in range(args.repeat):
                s, cuda_rows, cuda_h = _stats_pass(path, "cuda")
                cuda_s.append(s)
            cpu_s, cpu_rows, cpu_h = _stats_pass(path, "cpu")
            equal, worst = _rows_equal(cuda_rows, cpu_rows, 1e-9)
            r["tensor_stats_cuda_s"] = [round(x, 3) for x in cuda_s]
            r["tensor_stats_cuda_gb_s"] = round(size / 1e9 / statistics.median(cuda_s), 2)
            r["tensor_stats_cpu_1thread_s"] = round(cpu_s, 2)
            r["rows_equal_1e-9"] = equal
            r["worst_rel_diff"] = worst
            r["histograms_identical"] = cuda_h == cpu_h
            sums = []
            for i in range(args.repeat):
                cache = base / f"cache-{tag}-cuda-{i}"
                t0 = time.perf_counter()
                report = summarize(root, device="cuda", cache_dir=cache)
                sums.append(time.perf_counter() - t0)
                assert report.ok, report.failures
            r["summarize_cuda_s"] = [round(x, 3) for x in sums]
            r["summarize_cuda_gb_s"] = round(size / 1e9 / statistics.median(sums), 2)
            t0 = time.perf_counter()
            report = summarize(root, device="cpu", workers=args.cpu_workers, cache_dir=base / f"cache-{tag}-cpu")
            r[f"summarize_cpu_{args.cpu_workers}workers_s"] = round(time.perf_counter() - t0, 2)
            r["tables_cuda_vs_cpu"] = _tables_equal(root, base / f"cache-{tag}-cuda-0", base / f"cache-{tag}-cpu")
            result[tag] = r
            shutil.rmtree(root)
            print(json.dumps({tag: r}), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
