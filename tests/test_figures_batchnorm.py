"""BatchNorm: per-layer channel mean with a min–max band, small multiples, the heatmap, num_batches_tracked."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ckptboard.core.errors import UsageError
from ckptboard.core.health import bn_modules
from ckptboard.dashboard.figures.batchnorm import (
    SMALL_MULTIPLES_OVER,
    batchnorm_heatmap,
    batchnorm_layers_figure,
    num_batches_tracked_figure,
)
from _fixtures_tables import BN_CHANNELS, STEP_EVERY, synthetic_tables


@pytest.fixture(scope="module")
def tables():
    # 3 conv/BN blocks (18 tensors) + the 4 tail tensors
    return synthetic_tables(n_checkpoints=5, n_tensors=22, runs=1)


def test_layers_band_and_mean(tables):
    fig = batchnorm_layers_figure(tables, "run0", "running_var")
    assert len(fig.data) == 3 * 3  # per layer: band min, band max (filled), channel mean
    lo, hi, mean = fig.data[:3]
    assert mean.name == "block0.bn" and hi.fill == "tonexty"
    bn = tables.batchnorm
    first = bn[(bn["run"] == "run0") & (bn["module"] == "block0.bn") & (bn["step"] == 0)]["running_var"]
    assert mean.y[0] == pytest.approx(first.mean())
    assert lo.y[0] == pytest.approx(1e-10)  # the dead channel 0 of block0.bn
    assert hi.y[0] == pytest.approx(first.max())
    assert list(mean.x) == [i * STEP_EVERY for i in range(5)]


def test_small_multiples_one_panel_per_layer(tables):
    fig = batchnorm_layers_figure(tables, "run0", "running_mean", small_multiples=True)
    assert [a.text for a in fig.layout.annotations] == ["block0.bn", "block1.bn", "block2.bn"]
    assert {t.xaxis for t in fig.data} == {"x", "x2", "x3"}
    auto = batchnorm_layers_figure(synthetic_tables(2, 6 * (SMALL_MULTIPLES_OVER + 1) + 4, 1), "run0")
    assert len(auto.layout.annotations) == SMALL_MULTIPLES_OVER + 1  # more layers than the threshold: panels


def test_modules_filter_bad_stat_and_no_bn(tables):
    fig = batchnorm_layers_figure(tables, "run0", modules=["block1.bn"])
    assert [t.name for t in fig.data if t.showlegend is not False] == ["block1.bn"]
    with pytest.raises(UsageError, match="must be one of running_mean, running_var, got 'mean'"):
        batchnorm_layers_figure(tables, "run0", "mean")
    assert len(batchnorm_layers_figure(tables, "nope").data) == 0


def test_heatmap_channel_by_step(tables):
    fig = batchnorm_heatmap(tables, "run0", "block0.bn", "running_var")
    z = np.asarray(fig.data[0].z)
    assert z.shape == (BN_CHANNELS, 5)
    assert np.allclose(z[0], 1e-10)  # dead channel row
    assert list(fig.data[0].x) == [i * STEP_EVERY for i in range(5)]


def test_num_batches_tracked_collapses_identical_layers(tables):
    fig = num_batches_tracked_figure(tables, "run0")
    assert [t.name for t in fig.data] == ["all 3 layers"]
    assert list(fig.data[0].y) == [i * STEP_EVERY for i in range(5)]  # the fixture counts steps
    assert len(num_batches_tracked_figure(synthetic_tables(2, 4, 1), "run0").data) == 0  # no BN in the model


def test_bn_modules_in_model_order(tables):
    assert bn_modules(tables, "run0")["module"].tolist() == ["block0.bn", "block1.bn", "block2.bn"]


def test_small_multiples_stay_readable_with_long_names(tables):
    # Hugging Face ResNet-style module paths of 60+ characters, 9 layers: 3 rows of 4 panels.
    long = "encoder.stages.{}.layers.0.layer.1.normalization.with_a_long_suffix"
    bn = tables.batchnorm.copy()
    modules = sorted(bn["module"].unique())
    bn["module"] = bn["module"].map({m: long.format(i) for i, m in enumerate(modules)})
    many = pd.concat([bn.assign(module=bn["module"] + f"_{k}") for k in range(3)], ignore_index=True)
    fig = batchnorm_layers_figure(dataclasses.replace(tables, batchnorm=many), "run0", small_multiples=True)
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == 9 and all(len(t) <= 38 for t in titles) and len(set(titles)) == 9
    # every panel's x axis runs to the last step, labelled; the panels' own y axes name the statistic
    last = 4 * STEP_EVERY
    xaxes = [fig.layout[f"xaxis{i or ''}"] for i in range(9)]
    assert all(ax.range[1] > last and ax.showticklabels for ax in xaxes)
    assert fig.layout.yaxis.title.text == "running_mean"
    # a 64 px gap above each title row: 3 * 200 + 2 * 64 + 150 = 878 px
    assert fig.layout.height == 878
    mean_traces = [t for t in fig.data if t.hovertemplate]
    assert all(t.hovertemplate.startswith("encoder.stages.") for t in mean_traces)  # the full name on hover
