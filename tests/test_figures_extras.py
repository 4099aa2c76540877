"""Figures of the extras: the exact diff, spectral health over steps, gradients from optimizer state."""

import math

import pandas as pd
import pytest
import torch

from ckptboard.core.diff import diff_checkpoints
from ckptboard.core.gradients import APPROXIMATION
from ckptboard.core.spectral import SpectralMode, spectral_stats
from ckptboard.dashboard.figures.diff import diff_frame, diff_histogram_figure
from ckptboard.dashboard.figures.gradients import gradient_figure, gradient_series
from ckptboard.dashboard.figures.spectral import spectral_figure, spectral_layers


def test_diff_table_and_histogram(tmp_path):
    torch.manual_seed(0)
    a = {"w": torch.randn(20, 10), "b": torch.zeros(10), "n": torch.tensor(3)}
    b = {"w": a["w"] + 0.1, "b": torch.ones(10), "n": torch.tensor(5)}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    data = diff_checkpoints(tmp_path / "a.pt", tmp_path / "b.pt").to_json()
    frame = diff_frame(data)
    assert list(frame["a"])[:1] == ["w"]  # parameters by relative change; b has ||A|| = 0 (NaN) so comes after w
    fig = diff_histogram_figure(next(t for t in data["tensors"] if t["a"] == "w"))
    assert sum(fig.data[0].y) == 200  # 20 x 10 differences, all 0.1 (up to float32 rounding)


def _spectral_frame():
    rows = []
    torch.manual_seed(0)
    for step in (0, 10, 20):
        for name, shape in (("fc1.weight", (64, 32)), ("fc2.weight", (48, 64))):
            stats = spectral_stats(torch.randn(*shape) * (1 + step / 10), SpectralMode.FULL)
            rows.append({"run": "r", "checkpoint": f"s{step}", "step": step, "group": "", "name": name,
                         **stats.as_row()})
    return pd.DataFrame(rows)


def test_spectral_figure_draws_a_line_per_layer_with_weightwatchers_bands():
    frame = _spectral_frame()
    layers = spectral_layers(frame, "alpha")
    assert layers == [("", "fc2.weight"), ("", "fc1.weight")]  # 48 x 64 = 3072 elements, then 64 x 32 = 2048
    fig = spectral_figure(frame, "alpha", layers, ["r"])
    assert sorted(t.name for t in fig.data) == ["fc1.weight", "fc2.weight"]
    assert [list(t.x) for t in fig.data] == [[0, 10, 20]] * 2
    labels = [a.text for a in fig.layout.annotations]
    assert labels == ["WeightWatcher: over-trained", "WeightWatcher: well-trained", "WeightWatcher: under-trained"]
    stable = spectral_figure(frame, "stable_rank", layers, ["r"])
    assert not stable.layout.shapes  # bands only on alpha


def test_gradient_module_aggregation_and_the_stated_approximation():
    frame = pd.DataFrame([
        {"run": "r", "step": 1, "group": "", "name": "fc.weight", "module": "fc", "numel": 3, "grad_rms": 2.0,
         "grad_rms_max": 3.0, "m_norm": 3.0, "update_norm": 3.0, "weight_norm": 4.0, "update_ratio": 0.75},
        {"run": "r", "step": 1, "group": "", "name": "fc.bias", "module": "fc", "numel": 1, "grad_rms": 4.0,
         "grad_rms_max": 4.0, "m_norm": 4.0, "update_norm": 4.0, "weight_norm": 3.0, "update_ratio": 4 / 3},
    ])
    module = gradient_series(frame, "grad_rms", by_module=True)
    assert module["value"].iloc[0] == pytest.approx(math.sqrt((3 * 4 + 1 * 16) / 4))  # sqrt(Σ n·rms² / Σ n) = √7
    ratio = gradient_series(frame, "update_ratio", by_module=True)
    assert ratio["value"].iloc[0] == pytest.approx(5 / 5)  # ‖(3, 4)‖ / ‖(4, 3)‖
    fig = gradient_figure(frame, "grad_rms", ["fc"], ["r"], by_module=True)
    assert [a.text for a in fig.layout.annotations] == [APPROXIMATION]
