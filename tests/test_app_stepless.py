"""Runs without any step (``save_pretrained`` folders ``best/`` and ``final/``; ``best.pt``/``final.pt`` files):
ordered by modification time, labelled by name, and every view of the app opens on them."""

from __future__ import annotations

import os

import pytest
import torch
from _fixtures_app import app_test
from _fixtures_layouts import tiny_gpt2
from torch import nn

from ckptboard.core.discover import discover
from ckptboard.core.summarize import summarize
from ckptboard.core.load import load_stats
from ckptboard.dashboard.figures.overview import checkpoints_table
from ckptboard.dashboard.figures.histograms import distribution_figure, histogram_figure
from ckptboard.dashboard.figures.scalars import scalar_series
from ckptboard.dashboard.figures.stepless import POSITION_AXIS_TITLE
from ckptboard.dashboard.views import View


def _age(path, seconds):
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, ns=(seconds * 10**9, seconds * 10**9))


@pytest.fixture(scope="module")
def stepless(tmp_path_factory):
    root = tmp_path_factory.mktemp("stepless")
    model = tiny_gpt2()
    # names sort against their age: "final" (older) comes first by modification time
    for name, age in (("final", 1_000), ("best", 2_000)):
        with torch.no_grad():
            model.transformer.wte.weight.mul_(1.5)
        model.save_pretrained(root / "hf" / name)
        _age(root / "hf" / name, age)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    (root / "files").mkdir()
    for name, age in (("best.pt", 3_000), ("final.pt", 4_000), ("latest.pt", 5_000)):
        net.train()
        net(torch.randn(8, 3))  # moves the running statistics
        torch.save(net.state_dict(), root / "files" / name)
        _age(root / "files" / name, age)
    report = summarize(root)
    assert report.ok, report.failures
    return root


def test_stepless_runs_are_ordered_by_modification_time(stepless):
    runs = {r.name: [c.relpath for c in r.checkpoints] for r in discover(stepless)}
    assert runs == {"files": ["files/best.pt", "files/final.pt", "files/latest.pt"], "hf": ["hf/final", "hf/best"]}


def test_figures_draw_stepless_runs_by_name(stepless):
    tables = load_stats(stepless)
    assert tables.checkpoints["step"].isna().all()  # the cache keeps the missing steps
    fig = histogram_figure(tables, "hf", "", "transformer.wte.weight", mode="overlay")
    assert [trace.name for trace in fig.data] == ["hf/final", "hf/best"]
    fig = distribution_figure(tables, "files", "", "0.weight")
    assert list(fig.data[-1].x) == [0, 1, 2] and fig.layout.xaxis.title.text == POSITION_AXIS_TITLE
    series = scalar_series(tables, "norm", tensors=[("", "0.weight")], runs=["files"])
    assert series["step"].tolist() == [0, 1, 2]
    # the Overview's table lists them by modification time too, not by name
    assert checkpoints_table(tables, "hf")["checkpoint"].tolist() == ["hf/final", "hf/best"]


@pytest.mark.parametrize("view", list(View), ids=lambda v: v.name.lower())
def test_every_view_opens_on_stepless_runs(stepless, view):
    at = app_test(str(stepless))
    at.session_state["view"] = view
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_export_and_report_work_on_stepless_runs(stepless, tmp_path, capsys):
    from ckptboard.dashboard.cli import main

    assert main(["export", str(stepless), "--out", str(tmp_path / "out"), "--format", "csv,html"]) == 0
    capsys.readouterr()
    import pandas as pd

    checkpoints = pd.read_csv(tmp_path / "out" / "checkpoints.csv")
    assert checkpoints["step"].isna().all() and len(checkpoints) == 5
    assert (tmp_path / "out" / "index.html").stat().st_size > 0
