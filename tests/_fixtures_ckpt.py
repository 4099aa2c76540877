"""Real checkpoints for the reader tests: small modules from torch.nn, saved the ways training code saves them."""

from __future__ import annotations

import argparse
import builtins
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

__all__ = [
    "TrainConfig",
    "TinyNet",
    "trained_net",
    "lightning_dict",
    "odd_tensors",
    "save",
    "write_hf_folder",
    "SystemPayload",
    "ExecPayload",
    "OpenPayload",
    "InertPayload",
    "create_file",
]


class TrainConfig:
    """A user's config class, as Lightning stores it in ``hyper_parameters``."""

    def __init__(self, lr: float = 0.1, layers: int = 2):
        self.lr, self.layers = lr, layers


class TinyNet(nn.Module):
    """Conv + BatchNorm + Linear, tied embedding/head: 2 parameters share one storage."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(self.embed(x).transpose(1, 2))).transpose(1, 2)
        return self.head(h)


def trained_net(seed: int = 0) -> tuple[TinyNet, torch.optim.Optimizer]:
    """A TinyNet after one Adam step (so the optimizer has state)."""
    torch.manual_seed(seed)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net(torch.randint(0, 5, (2, 6))).sum().backward()
    opt.step()
    return net, opt


def lightning_dict(net: nn.Module, opt: torch.optim.Optimizer, global_step: int = 120, epoch: int = 3) -> dict:
    """What Lightning's ``trainer.save_checkpoint`` writes (same keys and nesting)."""
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    return {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": OrderedDict(net.state_dict()),
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": epoch}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_k_models": {"a.ckpt": torch.tensor(0.25)}}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict()],
        "hyper_parameters": {"args": argparse.Namespace(lr=0.01, batch_size=8), "config": TrainConfig(0.01, 3)},
    }


def odd_tensors() -> dict[str, torch.Tensor]:
    """Every dtype and layout the reader must reproduce exactly."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=g)
    return {
        "fp16": base.half(),
        "bf16": base.bfloat16(),
        "int8": torch.randint(-128, 127, (3, 3), dtype=torch.int8, generator=g),
        "bool": base > 0,
        "complex": torch.complex(base, -base),
        "scalar": torch.tensor(7.5),
        "empty": torch.empty(0, 3),
        "base": base,
        "strided": base[:, 1::2],  # a non-contiguous view of ``base``'s storage, at offset 1
        "transposed": base.t(),
        "fp8": base.to(torch.float8_e4m3fn),
        "q_tensor": torch.quantize_per_tensor(base, 0.05, 10, torch.quint8),
        "q_channel": torch.quantize_per_channel(
            base, torch.tensor([0.1, 0.2, 0.05, 0.3], dtype=torch.double), torch.zeros(4, dtype=torch.long), 0, torch.qint8
        ),
    }


def save(obj: object, path: Path, legacy: bool = False) -> Path:
    """``torch.save`` to ``path``: zip archive, or the legacy format when ``legacy``."""
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def write_hf_folder(folder: Path, state_dict: dict[str, torch.Tensor], shards: int = 2, kind: str = "safetensors") -> Path:
    """A Hugging Face sharded folder: ``shards`` files plus the index JSON naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state_dict)
    weight_map, total = {}, 0
    for i in range(shards):
        part = {n: state_dict[n].contiguous().clone() for n in names[i::shards]}
        if kind == "safetensors":
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, folder / shard, metadata={"format": "pt"})
        else:
            shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
            torch.save(part, folder / shard)
        weight_map.update({n: shard for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return folder


def create_file(path: str) -> None:
    """What :class:`InertPayload` would call: a global outside every deny list, that must still never run."""
    Path(path).write_text("ran")


class SystemPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecPayload(SystemPayload):
    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


class OpenPayload(SystemPayload):
    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


class InertPayload(SystemPayload):
    def __reduce__(self):
        return create_file, (str(self.marker),)
