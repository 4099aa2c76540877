"""The bf16-grid Histogram: bin edges, ordering, merge, coarsen, percentiles and rebin."""

import numpy as np
import pytest
import torch

from ckptboard.core.histogram import N_CODES, Histogram, code_values, rebin


def _codes(values) -> np.ndarray:
    return (np.asarray(values, dtype=np.float32).view(np.int32) >> 16) & 0xFFFF


def test_bins_are_one_bf16_ulp_sorted_by_value():
    h = Histogram.from_codes(_codes([1.0, 1.0, 1.5, -2.0, 0.0]))
    # ulp at 1 is 2**-7 = 0.0078125, at 2 it is 2**-6 = 0.015625; -2.0 lies in [-2.015625, -2.0]
    assert h.lo.tolist() == [-2.015625, 0.0, 1.0, 1.5]
    assert h.hi.tolist() == [-2.0, 2.0**-133, 1.0078125, 1.5078125]
    assert h.counts.tolist() == [1, 1, 2, 1]


def test_subnormal_and_largest_finite_bins():
    h = Histogram.from_codes(np.array([0x0001, 0x7F7F]))
    assert h.lo.tolist() == [2.0**-133, 255 * 2.0**120]  # bf16 code 0x7F7F is 1.9921875 * 2**127
    assert h.hi.tolist() == [2.0**-132, 2.0**128]


def test_non_finite_codes_are_dropped():
    counts = np.zeros(N_CODES, dtype=np.int64)
    counts[[0x3F80, 0x7F80, 0xFF80, 0x7FC0]] = [3, 1, 1, 1]  # 1.0 three times, +inf, -inf, NaN
    h = Histogram.from_code_counts(counts)
    assert (h.lo.tolist(), h.counts.tolist()) == ([1.0], [3])
    values, c = code_values(counts)
    assert (values.tolist(), c.tolist()) == ([1.0], [3])


def test_negative_zero_and_positive_zero_touch_at_zero():
    h = Histogram.from_codes(_codes([-0.0, 0.0]))
    assert h.lo.tolist() == [-(2.0**-133), 0.0]
    assert h.hi.tolist() == [0.0, 2.0**-133]


def test_merge_adds_identical_bins_and_keeps_disjoint_ones():
    a = Histogram([0.0, 1.0], [1.0, 2.0], [1, 2])
    b = Histogram([1.0, 5.0], [2.0, 6.0], [10, 1])
    m = a.merge(b)
    assert (m.lo.tolist(), m.hi.tolist(), m.counts.tolist()) == ([0.0, 1.0, 5.0], [1.0, 2.0, 6.0], [1, 12, 1])
    assert a.merge(Histogram.empty()) is a


def test_merge_refuses_overlapping_bins():
    with pytest.raises(ValueError, match="overlap with different edges"):
        Histogram([0.0], [2.0], [1]).merge(Histogram([1.0], [3.0], [1]))


def test_mismatched_arrays_are_refused():
    with pytest.raises(ValueError, match="equal length"):
        Histogram([0.0, 1.0], [1.0], [1])


def test_coarsen_merges_bins_by_cell():
    h = Histogram([0.0, 0.5, 1.0, 3.0], [0.5, 1.0, 1.5, 3.5], [1, 2, 3, 4])
    c = h.coarsen(1.0)  # cells [0, 1), [1, 2), [3, 4): bins 0+1, then 2, then 3
    assert (c.lo.tolist(), c.hi.tolist(), c.counts.tolist()) == ([0.0, 1.0, 3.0], [1.0, 1.5, 3.5], [3, 3, 4])
    assert h.coarsen(0.0) is h


def test_percentiles_at_edges_are_exact_for_bf16_values():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(5000, dtype=np.float32)).bfloat16().float().numpy()
    h = Histogram.from_codes(_codes(x))
    qs = np.array([0, 1, 6.68, 50, 93.32, 100])
    np.testing.assert_allclose(h.percentiles(qs, at_edges=True), np.percentile(x, qs), rtol=1e-12)


def test_percentiles_spread_values_uniformly_in_a_bin():
    h = Histogram([0.0], [1.0], [4])  # four values placed at 1/8, 3/8, 5/8, 7/8
    assert h.percentiles(np.array([0, 50, 100])).tolist() == [0.125, 0.5, 0.875]
    assert np.isnan(Histogram.empty().percentiles(np.array([50]))).all()


def test_rebin_spreads_counts_uniformly():
    # [0, 1] holds 4: 1 lands in [0, 0.25), 3 in [0.25, 1); [2, 4] holds 2: half in [1, 3), half beyond 3
    got = rebin([0.0, 2.0], [1.0, 4.0], [4, 2], np.array([0.0, 0.25, 1.0, 3.0]))
    assert got.tolist() == [1.0, 3.0, 1.0]


def test_rebin_conserves_counts_inside_the_edges():
    rng = np.random.default_rng(1)
    h = Histogram.from_codes(_codes(rng.standard_normal(10_000)))
    got = rebin(h.lo, h.hi, h.counts, np.linspace(h.lo[0], h.hi[-1], 257))
    assert got.shape == (256,)
    assert got.sum() == pytest.approx(10_000, rel=1e-12)


def test_rebin_refuses_bad_edges():
    with pytest.raises(ValueError, match="increasing"):
        rebin([0.0], [1.0], [1], np.array([1.0, 0.0]))


def test_every_finite_code_in_value_order_tiles_the_line():
    h = Histogram.from_code_counts(np.ones(N_CODES, dtype=np.int64))
    assert h.counts.size == 65_280  # 65,536 codes minus 2 x 128 non-finite (exponent all ones)
    assert np.all(h.lo[1:] == h.hi[:-1])  # sorted, each bin starting where the previous ends
    assert (h.lo[0], h.hi[-1]) == (-(2.0**128), 2.0**128)
