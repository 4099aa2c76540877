"""Listing speed and memory on a ~2 GB checkpoint: ckptboard's reader against torch.load(mmap=True, weights_only=True).

    python benchmarks/bench_inspect.py [--gb 2.0] [--repeats 5]

Writes a transformer-like state_dict (float32, embedding + N blocks of attention/MLP/LayerNorm) once into a temp
folder, then for each way of listing runs a fresh process ``--repeats`` times: the process opens the file and
walks every tensor's name, shape and dtype. Reported: median wall time of the process minus the median of
``python -c "import torch"``, the in-process time of open + walk, and the process's peak RSS and anonymous memory
minus those of the bare ``import torch`` process. The file is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PROBE = r"""
import json, resource, sys, time
import torch
mode, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "ckptboard":
    from ckptboard.core.reader import open_checkpoint
    ckpt = open_checkpoint(path)
    rows = [(t.name, t.shape, t.dtype, t.nbytes) for t in ckpt.tensors]
elif mode == "torch.load":
    sd = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    rows = [(k, tuple(v.shape), str(v.dtype), v.nbytes) for k, v in sd.items()]
else:
    rows = []
seconds = time.perf_counter() - start
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("RssAnon", "VmHWM")))
kib = {k: int(v.split()[0]) for k, v in status.items()}
print(json.dumps({"seconds": seconds, "tensors": len(rows), "bytes": sum(r[3] for r in rows),
                  "peak_rss_kib": kib["VmHWM"], "anon_kib": kib["RssAnon"]}))
"""


def _write_checkpoint(path: Path, gb: float) -> tuple[int, int]:
    """A float32 transformer state_dict of about ``gb`` GB: d_model 1024, vocab 32000, as many blocks as fit."""
    import torch

    d, vocab = 1024, 32000
    block = {
        "ln_1.weight": (d,), "ln_1.bias": (d,),
        "attn.q_proj.weight": (d, d), "attn.k_proj.weight": (d, d), "attn.v_proj.weight": (d, d),
        "attn.out_proj.weight": (d, d), "attn.out_proj.bias": (d,),
        "ln_2.weight": (d,), "ln_2.bias": (d,),
        "mlp.fc_in.weight": (4 * d, d), "mlp.fc_in.bias": (4 * d,),
        "mlp.fc_out.weight": (d, 4 * d), "mlp.fc_out.bias": (d,),
    }  # fmt: skip
    per_block = sum(torch.Size(s).numel() for s in block.values()) * 4
    embed = vocab * d * 4
    n_blocks = max(1, int((gb * 1e9 - 2 * embed) // per_block))
    state = {"embed_tokens.weight": torch.empty(vocab, d)}
    for i in range(n_blocks):
        state.update({f"layers.{i}.{k}": torch.empty(s) for k, s in block.items()})
    state["norm.weight"] = torch.ones(d)
    state["lm_head.weight"] = torch.empty(vocab, d)
    torch.save(state, path)
    return len(state), path.stat().st_size


def _probe(mode: str, path: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PROBE, mode, str(path)], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="checkpoint size in GB (default 2.0)")
    parser.add_argument("--repeats", type=int, default=5, help="processes per measurement (default 5)")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench_inspect_"))
    free = shutil.disk_usage(folder).free
    if free < 2 * args.gb * 1e9:
        shutil.rmtree(folder)
        print(f"not enough disk in {folder.parent}: {free / 1e9:.1f} GB free, need {2 * args.gb:.1f}", file=sys.stderr)
        return 1
    try:
        path = folder / "model.pt"
        n_tensors, size = _write_checkpoint(path, args.gb)
        print(f"checkpoint: {n_tensors} tensors, {size / 1e9:.2f} GB ({path})")
        results = {}
        for mode in ("baseline", "ckptboard", "torch.load"):
            runs = [_probe(mode, path) for _ in range(args.repeats)]
            results[mode] = {
                "wall": statistics.median(w for w, _ in runs),
                "inproc": statistics.median(r["seconds"] for _, r in runs),
                "peak": statistics.median(r["peak_rss_kib"] for _, r in runs) / 1024,
                "anon": statistics.median(r["anon_kib"] for _, r in runs) / 1024,
                "tensors": runs[0][1]["tensors"],
            }
        base = results.pop("baseline")
        print(f"baseline `import torch` process: {base['wall']:.3f} s, peak RSS {base['peak']:.0f} MiB, "
              f"anon {base['anon']:.0f} MiB (medians of {args.repeats})")
        print(f"{'listing':<12} {'tensors':>7} {'wall-base s':>11} {'open+walk s':>11} {'peak RSS-base MiB':>17} "
              f"{'anon(end)-base MiB':>18}")
        for mode, r in results.items():
            print(f"{mode:<12} {r['tensors']:>7} {r['wall'] - base['wall']:>11.3f} {r['inproc']:>11.4f} "
                  f"{r['peak'] - base['peak']:>17.1f} {r['anon'] - base['anon']:>18.1f}")
        ratio = results["torch.load"]["inproc"] / results["ckptboard"]["inproc"]
        print(f"open+walk: torch.load(mmap=True, weights_only=True) / ckptboard = {ratio:.1f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
