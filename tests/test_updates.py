"""update_stats between checkpoints and norm_running_stats from real norm layers."""

import math

import numpy as np
import pytest
import torch

from ckptboard.core import stats
from ckptboard.core.updates import UpdateStats, norm_running_stats, update_stats


def test_known_numbers():
    prev, cur, first = torch.tensor([3.0, 0.0]), torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])
    u = update_stats(prev, cur, first)
    # cur - prev = [0, 4] -> 4; ||prev|| = 3; <cur, prev> = 9, ||cur|| = 5 -> 9 / 15
    # cur - first = [3, 0] -> 3; ||first|| = 4
    assert u == UpdateStats(update_norm=4.0, update_ratio=4 / 3, cosine=0.6, dist_from_first=3.0,
                            rel_dist_from_first=0.75)
    assert list(u.as_row()) == ["update_norm", "update_ratio", "cosine", "dist_from_first", "rel_dist_from_first"]


def test_identical_tensors_give_exactly_zero_even_with_nan_and_inf():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    x[1], x[2] = float("nan"), float("inf")
    u = update_stats(x, x.clone(), x.clone())
    assert (u.update_norm, u.dist_from_first) == (0.0, 0.0)
    assert math.isnan(u.update_ratio)  # ||prev|| itself is NaN: the ratio has no meaning


def test_zero_previous_norm_gives_nan_ratios():
    u = update_stats(torch.zeros(4), torch.ones(4), None)
    assert u.update_norm == 2.0  # sqrt(4 * 1)
    assert math.isnan(u.update_ratio) and math.isnan(u.cosine)
    assert math.isnan(u.dist_from_first) and math.isnan(u.rel_dist_from_first)


def test_chunked_float64_sums_match_a_float64_reference(monkeypatch):
    g = torch.Generator().manual_seed(1)
    first = torch.randn(200, 300, generator=g)
    prev = first + 0.1 * torch.randn(200, 300, generator=g)
    cur = prev + 1e-3 * torch.randn(200, 300, generator=g)
    monkeypatch.setattr(stats, "CHUNK_BYTES", 4 * 1000)  # 60 chunks
    u = update_stats(prev, cur, first)
    p, c, f = prev.double(), cur.double(), first.double()
    assert u.update_norm == pytest.approx((c - p).norm().item(), rel=1e-12)
    assert u.update_ratio == pytest.approx(((c - p).norm() / p.norm()).item(), rel=1e-12)
    assert u.cosine == pytest.approx((c.flatten() @ p.flatten() / (c.norm() * p.norm())).item(), rel=1e-12)
    assert u.dist_from_first == pytest.approx((c - f).norm().item(), rel=1e-12)
    assert u.rel_dist_from_first == pytest.approx(((c - f).norm() / f.norm()).item(), rel=1e-12)


def test_mixed_dtypes_and_strided_views():
    g = torch.Generator().manual_seed(2)
    prev = torch.randn(40, 30, generator=g)
    cur = (prev + 0.5).bfloat16()
    u = update_stats(prev.t(), cur.t(), None)  # transposed views: the same elements are paired
    expected = (cur.double() - prev.double()).norm().item()
    assert u.update_norm == pytest.approx(expected, rel=1e-12)


def test_torch_reduction_equals_numba(monkeypatch):
    g = torch.Generator().manual_seed(3)
    prev, cur, first = (torch.randn(3000, generator=g) for _ in range(3))
    expected = update_stats(prev, cur, first)
    monkeypatch.setattr(stats, "_cpu_kernels", lambda: None)
    import ckptboard.core.updates as updates

    monkeypatch.setattr(updates, "_cpu_kernels", lambda: None)
    assert update_stats(prev, cur, first).as_row() == pytest.approx(expected.as_row(), rel=1e-12)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"one shape.*\(2,\).*\(3,\)"):
        update_stats(torch.zeros(2), torch.zeros(3), None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(monkeypatch):
    g = torch.Generator().manual_seed(4)
    prev, cur, first = (torch.randn(500, 700, generator=g) for _ in range(3))
    monkeypatch.setattr(stats, "GPU_CHUNK_BYTES", 64 * 1024)
    cpu = update_stats(prev, cur, first)
    assert update_stats(prev, cur, first, device="cuda").as_row() == pytest.approx(cpu.as_row(), rel=1e-9)


def test_norm_running_stats_of_a_trained_batchnorm():
    torch.manual_seed(5)
    bn = torch.nn.BatchNorm2d(3)
    bn(torch.randn(8, 3, 4, 4) * 2 + 1)
    sd = bn.state_dict()
    rows = norm_running_stats("features.bn", sd["running_mean"], sd["running_var"])
    assert [r["channel"] for r in rows] == [0, 1, 2]
    assert rows[1]["module"] == "features.bn"
    np.testing.assert_allclose([r["running_mean"] for r in rows], sd["running_mean"].double().numpy())
    np.testing.assert_allclose([r["running_var"] for r in rows], sd["running_var"].double().numpy())


def test_norm_running_stats_refuses_mismatched_channels():
    with pytest.raises(ValueError, match="bn: running_mean has 2 channels but running_var has 3"):
        norm_running_stats("bn", torch.zeros(2), torch.ones(3))
