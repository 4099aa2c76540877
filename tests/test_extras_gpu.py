"""diff, spectral health and gradients on --device cuda give the CPU's numbers (skipped without a CUDA device)."""

import numpy as np
import pytest
import torch

from ckptboard.core.diff import tensor_diff
from ckptboard.core.gradients import adam_stats
from ckptboard.core.spectral import SpectralMode, spectral_stats

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_diff_on_cuda_equals_cpu():
    torch.manual_seed(0)
    a = torch.randn(2000, 3000)
    b = (a + 0.01 * torch.randn(2000, 3000)).bfloat16()
    cpu, gpu = tensor_diff(a, b), tensor_diff(a, b, device="cuda")
    for name in ("norm_a", "norm_b", "diff_norm", "rel_change", "cosine", "mean_diff"):
        assert getattr(gpu, name) == pytest.approx(getattr(cpu, name), rel=1e-9), name
    assert (gpu.sign_flips, gpu.max_abs_diff) == (cpu.sign_flips, cpu.max_abs_diff)
    assert np.array_equal(gpu.histogram.counts, cpu.histogram.counts)


def test_spectral_on_cuda_equals_cpu():
    torch.manual_seed(0)
    w = torch.randn(512, 256) / 16
    for mode in (SpectralMode.DEFAULT, SpectralMode.FULL):
        cpu, gpu = spectral_stats(w, mode), spectral_stats(w, mode, device="cuda")
        assert gpu.sigma_max == pytest.approx(cpu.sigma_max, rel=1e-4)
        assert gpu.stable_rank == pytest.approx(cpu.stable_rank, rel=2e-4)
    assert spectral_stats(w, SpectralMode.FULL, device="cuda").alpha == pytest.approx(
        spectral_stats(w, SpectralMode.FULL).alpha, rel=1e-6)


def test_adam_stats_on_cuda_equals_cpu():
    torch.manual_seed(0)
    m, v, w = torch.randn(1000, 500) * 1e-3, torch.rand(1000, 500) * 1e-6, torch.randn(1000, 500)
    kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight=w)
    cpu, gpu = adam_stats(m, v, 100.0, **kw), adam_stats(m, v, 100.0, device="cuda", **kw)
    for name in ("grad_rms", "grad_rms_max", "m_norm", "update_norm", "weight_norm", "update_ratio"):
        assert getattr(gpu, name) == pytest.approx(getattr(cpu, name), rel=1e-9), name
    assert np.array_equal(gpu.histogram.counts, cpu.histogram.counts)
