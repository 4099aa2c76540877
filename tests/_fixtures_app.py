"""Fixtures for the app tests: a copy of ``sample_ckpts/`` (so the cache is written there) and an AppTest on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "dashboard" / "app.py"
SAMPLES = REPO / "sample_ckpts"
RUN_TIMEOUT_S = 60  # the first run of a fresh copy summarizes its checkpoints

__all__ = ["APP", "SAMPLES", "RUN_TIMEOUT_S", "copy_samples", "summarized_samples", "app_test", "write_tiny_run",
           "write_hf_resnet_run"]


def copy_samples(dst: Path) -> Path:
    """``sample_ckpts/`` copied to ``dst`` without any cache or bytecode; returns ``dst``."""
    shutil.copytree(SAMPLES, dst, ignore=shutil.ignore_patterns(".ckptboard", "__pycache__"))
    return dst


def summarized_samples(tmp_path_factory, dst: Path) -> Path:
    """A copy of ``sample_ckpts/`` at ``dst`` whose stats cache is already written. The samples are summarized
    once per test session and copied after that (``copy2`` keeps mtimes, so the cache keys still match)."""
    from ckptboard.core.summarize import summarize

    base = tmp_path_factory.getbasetemp() / "summarized_samples"
    if not base.exists():
        staging = copy_samples(tmp_path_factory.mktemp("staging") / "samples")
        summarize(staging, spectral="full")  # the Spectral view draws alpha too (with the app's --spectral full)
        staging.rename(base)
    shutil.copytree(base, dst)
    return dst


def app_test(*argv: str) -> AppTest:
    """The app, not yet run, started with ``argv`` (what follows ``--`` on the command line)."""
    at = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT_S)
    at.session_state["app_argv"] = list(argv)
    return at


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


def write_tiny_run(run_dir: Path, steps: list[int], seed: int = 0) -> list[Path]:
    """``step_<N>.pt`` state_dicts of a tiny Linear+BatchNorm net: ``fc.weight`` and the BN affine move by a
    seeded step each time, ``fc.bias`` never changes (a frozen parameter), ``bn.running_var`` decays by 0.9."""
    torch.manual_seed(seed)
    net = _TinyNet()
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for step in steps:
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name != "fc.bias":
                    p.add_(0.1 * torch.randn_like(p))
            net.bn.running_var.mul_(0.9)
            net.bn.num_batches_tracked.fill_(step)
        path = run_dir / f"step_{step}.pt"
        torch.save(net.state_dict(), path)
        paths.append(path)
    return paths


def write_hf_resnet_run(run_dir: Path, steps: list[int], seed: int = 0) -> list[Path]:
    """``checkpoint-<N>/`` folders written by transformers' ``save_pretrained`` (model.safetensors + config.json)
    of a tiny ResNetForImageClassification trained by a few seeded SGD steps between saves: Hugging Face's long
    module paths (``resnet.encoder.stages.1.layers.0.shortcut.normalization``, 10 BatchNorm layers)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2], layer_type="basic",
                          num_labels=4)  # fmt: skip
    model = ResNetForImageClassification(config).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    paths = []
    for step in steps:
        for _ in range(2):
            loss = model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.randint(0, 4, (4,))).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        path = run_dir / f"checkpoint-{step}"
        model.save_pretrained(path)
        paths.append(path)
    return paths
