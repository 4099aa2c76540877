"""Cost of the extras beside the base statistics on the 1 GB benchmark checkpoint (run by hand).

Writes the GPT-like 1 GB fp32 state_dict of ``_synth.py`` as a Lightning-style checkpoint with Adam state for every
parameter (``exp_avg``, ``exp_avg_sq``, ``step``: 2 GB more, as a real run saves it), and a second checkpoint whose
weights moved (for the diff). Warms the page cache, then times per round, in this process, one thread:

- ``base``: :func:`tensor_stats` over every model tensor (what summarize computes per tensor);
- ``spectral default``: :func:`spectral_stats` (Lanczos sigma_max + stable rank) over every 2-D weight;
- ``gradients``: :func:`gradient_rows` (every Adam state pair beside its weight);
- ``diff``: :func:`diff_checkpoints` of the two checkpoints (both read, every pair streamed).

Medians over ``--repeat`` rounds. Usage: ``python benchmarks/bench_extras.py [--gb 1] [--repeat 3] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synth import transformer_state  # noqa: E402


def _write(folder: Path, gb: float) -> tuple[Path, Path]:
    state = transformer_state(int(gb * 2**30))
    g = torch.Generator().manual_seed(1)
    opt_state = {i: {"step": torch.tensor(100.0), "exp_avg": torch.randn(t.shape, generator=g) * 1e-3,
                     "exp_avg_sq": torch.rand(t.shape, generator=g) * 1e-6} for i, t in enumerate(state.values())}
    optimizer = {"state": opt_state, "param_groups": [{"params": list(opt_state), "lr": 1e-3, "betas": (0.9, 0.999),
                                                        "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}]}
    a, b = folder / "a.ckpt", folder / "b.ckpt"
    torch.save({"global_step": 100, "state_dict": state, "optimizer_states": [optimizer]}, a)
    del optimizer, opt_state
    torch.save({"global_step": 200, "state_dict": {k: v + 1e-3 for k, v in state.items()}}, b)
    return a, b


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from ckptboard.core.classify import classify
    from ckptboard.core.diff import diff_checkpoints
    from ckptboard.core.gradients import gradient_rows
    from ckptboard.core.reader import open_checkpoint
    from ckptboard.core.spectral import spectral_stats
    from ckptboard.core.stats import tensor_stats

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        a, b = _write(Path(tmp), args.gb)
        print(f"checkpoint: {a.stat().st_size / 2**30:.2f} GiB (weights + Adam state), second {b.stat().st_size / 2**30:.2f} GiB")
        for path in (a, b):  # warm the page cache
            with open(path, "rb") as f:
                while f.read(64 << 20):
                    pass
        with open_checkpoint(a) as ckpt:
            classify(ckpt)
            tensor_stats(ckpt.load(ckpt.tensors[0]))  # numba compiled before timing
            runs = {
                "base": lambda: [tensor_stats(ckpt.load(t)) for t in ckpt.tensors],
                "spectral default": lambda: [spectral_stats(ckpt.load(t)) for t in ckpt.tensors],
                "gradients": lambda: gradient_rows(ckpt),
                "diff": lambda: diff_checkpoints(a, b),
            }
            times = {name: [] for name in runs}
            for _ in range(args.repeat):
                for name, fn in runs.items():
                    times[name].append(_time(fn))
        base = statistics.median(times["base"])
        for name, values in times.items():
            m = statistics.median(values)
            print(f"{name:>17}: median {m:6.2f} s ({m / base:5.2f}x base)  [{', '.join(f'{v:.2f}' for v in values)}]")


if __name__ == "__main__":
    main()
