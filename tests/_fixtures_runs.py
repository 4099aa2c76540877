"""Real checkpoint series for the cache/summarize/export tests: a tiny model trained a few seeded SGD steps.

``TinyNet`` has a frozen embedding (identical across the run), a Linear, a BatchNorm1d (running statistics and
``num_batches_tracked``) and a head. ``write_lightning_run`` saves Lightning-style dicts (``state_dict`` +
``optimizer_states`` + ``global_step``) as ``epoch=E-step=S.ckpt``; ``write_safetensors_run`` saves bare state_dicts
as ``step_SSSSSS.safetensors``. Every file gets an old mtime so that a broken one is "corrupt", not "being written".
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

__all__ = ["TinyNet", "BN_CHANNELS", "STEPS_BETWEEN", "write_lightning_run", "write_safetensors_run", "age"]

BN_CHANNELS = 3
STEPS_BETWEEN = 2  # optimizer steps between two checkpoints


class TinyNet(nn.Module):
    """embed (frozen) -> fc -> bn -> head: 5 parameters tensors, 3 BatchNorm buffers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.fc = nn.Linear(4, BN_CHANNELS)
        self.bn = nn.BatchNorm1d(BN_CHANNELS)
        self.head = nn.Linear(BN_CHANNELS, 2, bias=False)
        self.embed.weight.requires_grad_(False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.fc(self.embed(idx)))))


def age(path: Path, seconds: float = 3600.0) -> None:
    """Set ``path``'s mtime ``seconds`` in the past (a file the training job finished long ago)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def _train(n_checkpoints: int, seed: int):
    """Yield (step, model, optimizer) after every ``STEPS_BETWEEN`` SGD steps; checkpoint 0 is step 0."""
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    step = 0
    for i in range(n_checkpoints):
        if i:
            for _ in range(STEPS_BETWEEN):
                idx = torch.randint(0, 5, (8,), generator=g)
                loss = model(idx).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
        yield step, model, optimizer


def write_lightning_run(folder: Path, n_checkpoints: int = 3, seed: int = 0) -> list[Path]:
    """Lightning-style ``.ckpt`` files of one run; returns their paths in step order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for epoch, (step, model, optimizer) in enumerate(_train(n_checkpoints, seed)):
        path = folder / f"epoch={epoch}-step={step}.ckpt"
        torch.save({"epoch": epoch, "global_step": step, "state_dict": model.state_dict(),
                    "optimizer_states": [optimizer.state_dict()], "pytorch-lightning_version": "2.4.0"}, path)
        age(path, 3600.0 - step)
        paths.append(path)
    return paths


def write_safetensors_run(folder: Path, n_checkpoints: int = 3, seed: int = 1) -> list[Path]:
    """Bare state_dicts as ``.safetensors``, the step only in the file name; returns their paths in step order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for step, model, _ in _train(n_checkpoints, seed):
        path = folder / f"step_{step:06d}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        age(path, 3600.0 - step)
        paths.append(path)
    return paths
