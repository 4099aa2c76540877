"""BatchNorm: per-layer channel mean with a min–max band, small multiples, the heatmap, num_batches_tracked."""

import numpy as np
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
