"""Defaults worth seeing: the Histograms view opens on the largest trainable tensor that changes over the run."""

from __future__ import annotations

import torch
from torch import nn

from ckptboard.core.load import load_stats
from ckptboard.core.summarize import summarize
from ckptboard.dashboard.views._pickers import worth_seeing


class _FrozenStemNet(nn.Module):
    """A frozen 16×16 stem (256 values, never changes), a trainable 8×16 head (128), a BatchNorm of 8 and a
    LayerNorm of 8 whose weight stays at ones."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(16, 16)
        self.head = nn.Linear(16, 8)
        self.bn = nn.BatchNorm1d(8)
        self.ln = nn.LayerNorm(8)


def _write_run(run_dir, steps=(0, 10, 20)):
    torch.manual_seed(0)
    net = _FrozenStemNet()
    run_dir.mkdir(parents=True)
    for step in steps:
        with torch.no_grad():
            net.head.weight.add_(0.01 * torch.randn_like(net.head.weight))
            net.bn.bias.add_(0.1 * torch.randn_like(net.bn.bias))
        torch.save(net.state_dict(), run_dir / f"step_{step}.pt")


def test_histograms_default_is_the_largest_tensor_that_changes(tmp_path):
    _write_run(tmp_path / "run")
    summarize(tmp_path)
    tables = load_stats(tmp_path)
    options = sorted(set(zip(tables.tensors["group"], tables.tensors["name"])))
    # stem.weight (256) is larger but never changes; head.weight (128) is the largest that does.
    assert worth_seeing(tables, "run", options) == ("", "head.weight")


def test_without_updates_the_largest_parameter_is_shown(tmp_path):
    _write_run(tmp_path / "run", steps=(0,))  # one checkpoint: nothing can be seen to change
    summarize(tmp_path)
    tables = load_stats(tmp_path)
    options = sorted(set(zip(tables.tensors["group"], tables.tensors["name"])))
    assert worth_seeing(tables, "run", options) == ("", "stem.weight")
