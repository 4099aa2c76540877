"""Agreement of the gradient RMS read from Adam's saved state with the true gradient RMS of a real training run.

Trains the sample CNN (``sample_ckpts/model.py``) with Adam (betas 0.9, 0.999) on seeded synthetic images, records
every step's true gradient, saves a Lightning-style checkpoint every ``--every`` steps and reads it back with
:func:`ckptboard.core.gradients.gradient_rows`. Per checkpoint and parameter tensor it prints the ratio of the
state's ``grad_rms`` (sqrt(mean v̂)) to

- ``this step``: the RMS of the gradient of the step the checkpoint was saved at (what a logger would have drawn);
- ``window``: the RMS over the last 1/(1 − β₂) = 1000 steps (or all so far), uniformly weighted;

medians (and 10th-90th percentiles) over the parameter tensors. Usage:
``python benchmarks/bench_grad_agreement.py [--steps 600] [--every 100]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_ckpts"))
from model import SmallCNN  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from ckptboard.core.classify import classify
    from ckptboard.core.gradients import gradient_rows
    from ckptboard.core.reader import open_checkpoint

    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(3 * 32 * 32, 4, generator=g)
    sq_history: dict[str, list[float]] = {n: [] for n, _ in model.named_parameters()}
    print("step  tensors  this-step ratio: median [p10, p90]   window ratio: median [p10, p90]")
    with tempfile.TemporaryDirectory() as tmp:
        for step in range(1, args.steps + 1):
            x = torch.randn(32, 3, 32, 32, generator=g)
            y = (x.flatten(1) @ teacher).argmax(1)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            for name, p in model.named_parameters():
                if p.grad is not None:  # the sample model's input_mean is frozen
                    sq_history[name].append(float(p.grad.double().square().mean()))
            opt.step()
            if step % args.every:
                continue
            path = Path(tmp) / f"step={step}.ckpt"
            torch.save({"global_step": step, "state_dict": model.state_dict(),
                        "optimizer_states": [opt.state_dict()]}, path)
            with open_checkpoint(path) as ckpt:
                classify(ckpt)
                rows, _ = gradient_rows(ckpt)
            now, window = [], []
            for row in rows:
                hist = sq_history.get(row["name"])
                if hist and hist[-1] > 0:
                    now.append(row["grad_rms"] / np.sqrt(hist[-1]))
                    window.append(row["grad_rms"] / np.sqrt(np.mean(hist[-1000:])))
            print(f"{step:4d}  {len(rows):7d}  {_summary(now):>32}   {_summary(window):>30}")


def _summary(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{np.median(v):.3f} [{np.percentile(v, 10):.3f}, {np.percentile(v, 90):.3f}]"


if __name__ == "__main__":
    main()
