"""Every figure builder and the report on tables summarised from real ``torch.save`` checkpoints of an nn.Module.

A small conv/BatchNorm net takes a few seeded SGD steps; one file of the run is truncated (an error card).
"""

import os

import pytest
import torch
from torch import nn

from ckptboard.core.summarize import summarize
from ckptboard.core.health import compare_checkpoints, error_cards, health_table
from ckptboard.core.load import load_stats
from ckptboard.dashboard.figures.batchnorm import batchnorm_heatmap, batchnorm_layers_figure, num_batches_tracked_figure
from ckptboard.dashboard.figures.compare import compare_figure
from ckptboard.dashboard.figures.histograms import distribution_figure, histogram_figure
from ckptboard.dashboard.figures.overview import runs_overview_figure
from ckptboard.dashboard.figures.scalars import scalar_figure
from ckptboard.dashboard.figures.tensors import tensor_table
from ckptboard.dashboard.report import write_report

STEPS = (0, 10, 20, 30)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    model, run = _net(), root / "run"
    run.mkdir()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS[-1] + 1):
        if step in STEPS:
            torch.save(model.state_dict(), run / f"step_{step:04d}.pt")
        loss = model(torch.randn(8, 1, 6, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    good, bad = (run / "step_0030.pt").read_bytes(), run / "step_0040.pt"
    bad.write_bytes(good[: len(good) // 2])  # a truncated archive
    os.utime(bad, (1e9, 1e9))  # written long ago: broken, not still being written
    summarize(root, cache_dir=root / ".cache")
    return load_stats(root, cache_dir=root / ".cache")


def test_real_tables_drive_every_builder(tables):
    assert [c["checkpoint"] for c in error_cards(tables)] == ["run/step_0040.pt"]
    overview = runs_overview_figure(tables)
    assert list(overview.data[0].x) == list(STEPS)
    # parameter elements: conv 4*1*3*3 + 4 = 40, bn 4 + 4 = 8, linear 64*2 + 2 = 130 -> 178
    assert list(overview.data[1].y) == [178.0] * 4
    table = tensor_table(tables, "run/step_0030.pt", kinds=["buffer"])
    assert table["name"].tolist() == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]

    norm = scalar_figure(tables, "norm", tensors=["4.weight"])
    assert list(norm.data[0].x) == list(STEPS)
    ratio = scalar_figure(tables, "update_ratio", modules=["0", "4"], smoothing=0.5)
    assert [t.name for t in ratio.data if not t.meta["raw"]] == ["0", "4"]

    hist = histogram_figure(tables, "run", "", "4.weight", mode="overlay", bins=10)
    # 4.weight holds 64*2 = 128 finite values at every step, all inside the common edges
    assert [round(sum(t.y)) for t in hist.data] == [128] * 4
    assert len(distribution_figure(tables, "run", "", "4.weight").data) == 9

    assert len(batchnorm_layers_figure(tables, "run", "running_var").data) == 3  # one layer: band + mean
    assert batchnorm_heatmap(tables, "run", "1").data[0].z.shape == (4, 4)  # 4 channels x 4 steps
    assert list(num_batches_tracked_figure(tables, "run").data[0].y) == list(STEPS)  # one batch per SGD step

    result = compare_checkpoints(tables, "run/step_0000.pt", "run/step_0030.pt")
    assert set(result.changes["method"]) == {"exact"}  # the first checkpoint: distances from the first
    assert len(compare_figure(result).data) == 1
    assert "check" in health_table(tables).columns


def test_real_tables_report(tables, tmp_path):
    result = write_report(tables, tmp_path)
    text = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert result.skipped == [] and text.count('class="plotly-graph-div"') == result.n_figures
    assert "run/step_0040.pt" in text
