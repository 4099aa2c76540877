"""Spectral health: sigma_max, stable rank and the ESD power-law alpha, against WeightWatcher itself and against
matrices of known spectrum."""

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from ckptboard.core.spectral import (
    AlphaBand,
    SpectralMode,
    alpha_band,
    esd,
    fit_alpha,
    power_sigma_max,
    spectral_stats,
    weight_matrices,
)


def _with_singular_values(s: np.ndarray, rows: int, seed: int = 0) -> torch.Tensor:
    """A rows x len(s) matrix U diag(s) Vᵀ with random orthogonal U, V: its singular values are exactly ``s``."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, s.size, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(s.size, s.size, generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.from_numpy(s)) @ v.T


def test_known_spectrum_sigma_max_stable_rank_and_esd():
    s = np.array([5.0, 3.0, 2.0, 1.0])
    w = _with_singular_values(s, rows=6)
    full = spectral_stats(w, SpectralMode.FULL)
    assert full.sigma_max == pytest.approx(5.0, rel=1e-12)
    assert full.stable_rank == pytest.approx((25 + 9 + 4 + 1) / 25, rel=1e-12)  # ||W||_F^2 / sigma_max^2 = 39/25
    assert np.allclose(esd(weight_matrices(w)), [1.0, 4.0, 9.0, 25.0])
    assert math.isnan(full.alpha)  # 4 eigenvalues: too few to fit
    power = spectral_stats(w.float(), SpectralMode.DEFAULT)
    assert power.method == "power" and power.sigma_max == pytest.approx(5.0, rel=1e-4)  # gap 5 vs 3: converges
    assert power.sigma_max <= 5.0 * (1 + 1e-6)  # power iteration approaches from below


def test_alpha_of_a_known_power_law_spectrum():
    # Eigenvalues at the quantiles of a Pareto law with exponent 3 above 1: lambda_i = (1 - q_i)^(-1 / (alpha - 1)).
    n, alpha = 2000, 3.0
    q = (np.arange(n) + 0.5) / n
    evals = (1.0 - q) ** (-1.0 / (alpha - 1.0))
    w = _with_singular_values(np.sqrt(evals), rows=n + 10)
    stats = spectral_stats(w, SpectralMode.FULL)
    assert stats.alpha == pytest.approx(3.0, abs=0.05)
    # The published estimator at the chosen xmin: alpha = 1 + n / sum(log(x / xmin)) over the x >= xmin.
    tail = np.sort(esd(weight_matrices(w)))
    tail = tail[tail >= stats.alpha_xmin]
    assert stats.alpha_n == tail.size
    assert stats.alpha == pytest.approx(1 + tail.size / np.sum(np.log(tail / stats.alpha_xmin)), rel=1e-9)
    assert stats.alpha_sigma == pytest.approx((stats.alpha - 1) / math.sqrt(tail.size))


def test_conv_weights_are_kernel_slices_and_other_shapes_have_none():
    conv = torch.randn(8, 4, 3, 3)
    mats = weight_matrices(conv)
    assert mats.shape == (9, 8, 4)  # one (out, in) matrix per kernel tap
    assert torch.equal(mats[4], conv[:, :, 1, 1])
    assert weight_matrices(torch.randn(8)) is None and weight_matrices(torch.randn(1, 8)) is None
    assert spectral_stats(torch.randn(8, 4, 3, 3), SpectralMode.OFF) is None
    assert spectral_stats(torch.ones(3, 3, dtype=torch.int64)) is None
    zero = spectral_stats(torch.zeros(5, 5), SpectralMode.FULL)
    assert zero.sigma_max == 0.0 and math.isnan(zero.stable_rank)
    bad = torch.ones(5, 5)
    bad[0, 0] = float("nan")
    assert math.isnan(spectral_stats(bad).sigma_max)


def test_power_iteration_on_a_stack_takes_the_largest():
    mats = torch.stack([torch.diag(torch.tensor([1.0, 0.5])), torch.diag(torch.tensor([3.0, 1.0]))])
    sigma, steps = power_sigma_max(mats)
    assert sigma == pytest.approx(3.0, rel=1e-4) and steps >= 2


def test_alpha_bands_are_weightwatchers():
    assert [alpha_band(a) for a in (1.5, 2.0, 4.0, 6.0, 6.5, float("nan"))] == [
        AlphaBand.OVER_TRAINED, AlphaBand.WELL_TRAINED, AlphaBand.WELL_TRAINED, AlphaBand.WELL_TRAINED,
        AlphaBand.UNDER_TRAINED, AlphaBand.NONE]


def test_fit_needs_twenty_eigenvalues():
    assert fit_alpha(np.linspace(1, 2, 19)) is None and fit_alpha(np.linspace(1, 2, 20)) is not None


def test_agrees_with_weightwatcher():
    ww = pytest.importorskip("weightwatcher")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.Linear(128, 512))
    with torch.no_grad():  # heavy-tailed entries, as trained layers have
        model[0].weight.copy_(torch.distributions.StudentT(3.0).sample((200, 300)) * 0.05)
        model[2].weight.copy_(torch.distributions.StudentT(2.5).sample((32, 16, 3, 3)) * 0.05)
    details = ww.WeightWatcher(model=model, log_level=logging.ERROR).analyze(plot=False)
    weights = {"0": model[0].weight, "2": model[2].weight, "3": model[3].weight}
    for _, row in details.iterrows():
        ours = spectral_stats(weights[row["name"]], SpectralMode.FULL)
        assert ours.alpha == pytest.approx(row["alpha"], rel=1e-9)
        assert ours.alpha_ks == pytest.approx(row["D"], rel=1e-9)
        assert ours.alpha_sigma == pytest.approx(row["sigma"], rel=1e-9)
        assert ours.stable_rank == pytest.approx(row["stable_rank"], rel=1e-9)
        assert ours.n_evals == row["num_evals"]
        # WeightWatcher scales conv eigenvalues by its conv2d_norm; dense layers are unscaled.
        if row["name"] != "2":
            assert ours.sigma_max ** 2 == pytest.approx(row["spectral_norm"], rel=1e-9)
            assert ours.alpha_xmin == pytest.approx(row["xmin"], rel=1e-9)
