"""The reader's read path side by side with another checkout: open, load every tensor (then ``sum`` or ``tensor_stats``).

    python benchmarks/bench_read.py DIR [--rounds 5] --before /tmp/xpkg

Writes a 1 GiB float32 and a 1 GiB bfloat16 ``torch.save`` checkpoint (64 MiB tensors) into DIR once, then runs
each mode in a fresh process per round for this checkout and for the one importable from ``--before`` (a folder
holding a ``ckptboard`` link to another worktree, e.g. of main), alternating their order each round so that load
on a shared machine hits both alike. Prints medians and every round's seconds, and VmHWM / RssAnon (kB) of the
last round.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

CHILD = r"""
import sys, time, json
import torch
torch.set_num_threads(1)
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.stats import tensor_stats
mode = sys.argv[2]
t = time.perf_counter()
with open_checkpoint(sys.argv[1]) as ckpt:
    t_list = time.perf_counter() - t
    for info in ckpt.tensors:
        x = ckpt.load(info)
        if mode == "stats":
            tensor_stats(x)
        else:
            x.sum()
total = time.perf_counter() - t
hwm = [l for l in open('/proc/self/status') if l.startswith(('VmHWM', 'RssAnon'))]
print(json.dumps({"list": t_list, "total": total, "mem": " ".join(h.split()[1] for h in hwm)}))
"""

def make(folder: Path) -> dict:
    """The two checkpoints (written once)."""
    folder.mkdir(exist_ok=True)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        path = folder / f"gpt_{str(dtype)[6:]}.pt"
        if not path.exists():
            g = torch.Generator().manual_seed(0)
            n_el = (1 << 30) // dtype.itemsize
            sd, left, i = {}, n_el, 0
            while left > 0:
                k = min(left, 16 << 20)
                sd[f"h.{i}.w"] = torch.randn(k, generator=g).to(dtype)
                left, i = left - k, i + 1
            torch.save(sd, path)
        out[dtype] = path
    return out

def run(tree: str, path: Path, mode: str) -> dict:
    """One fresh process of ``mode`` over ``path`` with ``tree`` first on PYTHONPATH."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], capture_output=True, text=True, env=env,
                         check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", required=True, help="PYTHONPATH that imports the other checkout's ckptboard")
    args = parser.parse_args()
    files, rounds = make(args.dir), args.rounds
    trees = {"before": args.before, "after (this checkout)": ""}
    for mode in ("sum", "stats"):
        for dtype, path in files.items():
            res = {k: [] for k in trees}
            for r in range(rounds):
                for name, tree in (trees.items() if r % 2 == 0 else reversed(list(trees.items()))):
                    res[name].append(run(tree, path, mode))
            for name in trees:
                total = statistics.median(x["total"] for x in res[name])
                listing = statistics.median(x["list"] for x in res[name])
                rounds_s = ", ".join(f"{x['total']:.2f}" for x in res[name])
                print(f"{mode:5} {str(dtype):15} {name:22} open+load median {total:.3f} s (listing {listing * 1000:.1f} ms) "
                      f"[{rounds_s}] VmHWM/RssAnon kB {res[name][-1]['mem']}", flush=True)  # fmt: skip
