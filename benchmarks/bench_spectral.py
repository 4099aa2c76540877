"""Seconds of spectral health per checkpoint for a 125M-parameter model (GPT-2 small config, random weights).

Builds ``GPT2LMHeadModel(GPT2Config())`` (seeded, transformers' own initialisation), saves it with
``save_pretrained`` into a temporary folder, then times :func:`ckptboard.core.spectral.spectral_stats` over every
2-D weight read through :func:`ckptboard.core.reader.open_checkpoint` (one tensor in memory at a time), for
``--spectral default`` (power iteration) and ``full`` (ESD + alpha), ``--repeat`` rounds, medians printed. Also
reports how far power iteration's sigma_max is below the exact one (from ``full``).

Usage: ``python benchmarks/bench_spectral.py [--repeat 3] [--threads 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _one_pass(path: Path, mode: str, device: str) -> tuple[float, dict[str, float]]:
    from ckptboard.core.reader import open_checkpoint
    from ckptboard.core.spectral import spectral_stats

    sigmas = {}
    start = time.perf_counter()
    with open_checkpoint(path) as ckpt:
        for info in ckpt.tensors:
            if info.tied_to:
                continue
            stats = spectral_stats(ckpt.load(info), mode, device=device)
            if stats is not None:
                sigmas[info.name] = stats.sigma_max
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, sigmas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
        print(f"GPT-2 small: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
        model.save_pretrained(tmp)
        del model
        times = {"default": [], "full": []}
        for _ in range(args.repeat):
            for mode in times:
                seconds, sigmas = _one_pass(Path(tmp), mode, args.device)
                times[mode].append(seconds)
                if mode == "default":
                    power = sigmas
                else:
                    exact = sigmas
        for mode, values in times.items():
            print(f"--spectral {mode}: median {statistics.median(values):.2f} s per checkpoint "
                  f"({', '.join(f'{v:.2f}' for v in values)}; {args.threads} thread(s), {args.device})")
        below = sorted((exact[k] - power[k]) / exact[k] for k in exact)
        print(f"power iteration sigma_max below exact: median {statistics.median(below):.2e}, max {below[-1]:.2e} "
              f"relative, over {len(below)} weights")


if __name__ == "__main__":
    main()
