"""Train the sample runs that ship in ``sample_ckpts/`` (CPU, seeded, about a minute).

Three runs of :class:`SmallCNN` on a learnable synthetic task (4 classes of oriented colour gratings in noise):
- ``adamw_lr1e-3/`` and ``adamw_lr1e-2/``: Lightning-style ``.ckpt`` dicts with optimizer and scheduler state,
  ``epoch=E-step=S.ckpt`` names, 16 checkpoints each (run comparison: two learning rates);
- ``sgd_safetensors/``: bare state_dicts as ``.safetensors``, the step only in the file name.

Usage: ``python sample_ckpts/make_samples.py [OUT_DIR]`` (default: the folder of this script).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import NUM_CLASSES, SmallCNN  # noqa: E402

CHECKPOINTS_PER_RUN = 16
STEPS_BETWEEN_CHECKPOINTS = 30
BATCH_SIZE = 64
TRAIN_SIZE = 1920  # 30 batches: one epoch between checkpoints


def make_dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the orientation of a coloured grating, plus noise: easy to learn, not trivial."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    angles = labels.float() * (math.pi / NUM_CLASSES)
    freq = 0.5 + 0.2 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    proj = xs[None] * torch.cos(angles)[:, None, None] + ys[None] * torch.sin(angles)[:, None, None]
    grating = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    colour = 0.4 * (0.5 + torch.rand(n, 3, 1, 1, generator=g))
    images = colour * grating[:, None] + 2.0 * torch.randn(n, 3, 32, 32, generator=g) + 0.3
    return images, labels


def _lightning_dict(model, optimizer, scheduler, epoch, step, hparams, best_acc) -> dict:
    """The layout ``lightning.Trainer.save_checkpoint`` writes (the LightningModule is the model itself)."""
    return {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": model.state_dict(),
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": epoch}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max'}": {
                "best_model_score": torch.tensor(best_acc),
                "monitor": "val_acc",
            }
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "hparams_name": "args",
        "hyper_parameters": hparams,
    }


def train_run(out: Path, *, optimizer_name: str, lr: float, seed: int, fmt: str) -> float:
    """Train one run, saving a checkpoint every ``STEPS_BETWEEN_CHECKPOINTS`` steps; return the final accuracy."""
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    x, y = make_dataset(TRAIN_SIZE, seed=1234)
    x_val, y_val = make_dataset(512, seed=4321)
    model = SmallCNN()
    model.input_mean.copy_(x.mean(dim=(0, 2, 3), keepdim=True))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    else:
        optimizer = torch.optim.SGD(trainable, lr=lr, momentum=0.9)
    total_steps = CHECKPOINTS_PER_RUN * STEPS_BETWEEN_CHECKPOINTS
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    hparams = argparse.Namespace(optimizer=optimizer_name, lr=lr, batch_size=BATCH_SIZE, seed=seed)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    step, acc = 0, 0.0
    for epoch in range(CHECKPOINTS_PER_RUN):
        model.train()
        order = torch.randperm(TRAIN_SIZE, generator=g)
        for i in range(STEPS_BETWEEN_CHECKPOINTS):
            idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
        model.eval()
        with torch.no_grad():
            acc = (model(x_val).argmax(1) == y_val).float().mean().item()
        print(f"  {out.name}: epoch {epoch:2d} step {step:4d} loss {loss.item():.3f} val_acc {acc:.3f}")
        if fmt == "ckpt":
            ckpt = _lightning_dict(model, optimizer, scheduler, epoch, step, hparams, acc)
            torch.save(ckpt, out / f"epoch={epoch}-step={step}.ckpt")
        else:
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, out / f"checkpoint_{step:06d}.safetensors")
    return acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models train several times faster on one thread here
    runs = [
        ("adamw_lr1e-3", dict(optimizer_name="adamw", lr=1e-3, seed=0, fmt="ckpt")),
        ("adamw_lr1e-2", dict(optimizer_name="adamw", lr=1e-2, seed=0, fmt="ckpt")),
        ("sgd_safetensors", dict(optimizer_name="sgd", lr=0.05, seed=1, fmt="safetensors")),
    ]
    start = time.perf_counter()
    for name, kwargs in runs:
        run_dir = args.out / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        acc = train_run(run_dir, **kwargs)
        print(f"{name}: final val_acc {acc:.3f}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
