"""Each edge case of the ckptboard.core.stats module docstring, tested by name."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from ckptboard.core import stats
from ckptboard.core.errors import UsageError
from ckptboard.core.schema import PERCENTILE_COLUMNS
from ckptboard.core.stats import STAT_COLUMNS, tensor_stats

BIG = stats.EXACT_PERCENTILE_NUMEL + 1  # first size that takes the streaming (numba) path


def _all_percentiles(s) -> set[float]:
    return set(s.percentiles.values())


def test_empty_tensor():
    s = tensor_stats(torch.zeros(0, 4))
    assert (s.numel, s.zeros, s.nans, s.posinfs, s.neginfs) == (0, 0, 0, 0, 0)
    for value in (s.mean, s.std, s.min, s.max, s.abs_mean, s.norm, *s.percentiles.values()):
        assert math.isnan(value)
    assert s.histogram.counts.size == 0


def test_zero_dim_tensor_is_its_own_statistic():
    bn = torch.nn.BatchNorm1d(3)
    bn.train()
    for _ in range(7):
        bn(torch.randn(4, 3))
    s = tensor_stats(bn.state_dict()["num_batches_tracked"])  # int64 0-d tensor holding 7
    assert (s.numel, s.mean, s.min, s.max, s.std, s.norm) == (1, 7.0, 7.0, 7.0, 0.0, 7.0)
    assert _all_percentiles(s) == {7.0}
    assert s.histogram.total == 1


@pytest.mark.parametrize("numel", [1, BIG])
def test_constant_tensor(numel):
    s = tensor_stats(torch.full((numel,), 0.1))
    v = float(np.float32(0.1))
    assert (s.mean, s.std, s.min, s.max) == (v, 0.0, v, v)
    assert _all_percentiles(s) == {v}
    assert s.norm == pytest.approx(v * math.sqrt(numel), rel=1e-15)  # sqrt(n * v^2)
    assert s.histogram.counts.tolist() == [numel]


def test_one_element():
    s = tensor_stats(torch.tensor([-2.5]))
    assert (s.numel, s.mean, s.std, s.min, s.max, s.abs_mean, s.norm) == (1, -2.5, 0.0, -2.5, -2.5, 2.5, 2.5)


@pytest.mark.parametrize("numel", [10, BIG])
def test_all_nan(numel):
    s = tensor_stats(torch.full((numel,), float("nan")))
    assert (s.numel, s.nans, s.zeros, s.infs) == (numel, numel, 0, 0)
    for value in (s.mean, s.std, s.min, s.max, s.abs_mean, s.norm, *s.percentiles.values()):
        assert math.isnan(value)
    assert s.histogram.total == 0


@pytest.mark.parametrize("numel", [8, BIG + 3])
def test_inf_and_nan_mixed_with_finite_values(numel):
    x = torch.ones(numel)
    x[:3] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    x[3] = 0.0
    x[4] = -3.0
    s = tensor_stats(x)
    finite = numel - 3
    assert (s.posinfs, s.neginfs, s.infs, s.nans, s.zeros) == (1, 1, 2, 1, 1)
    assert (s.min, s.max) == (-3.0, 1.0)
    # finite values: one 0, one -3, (finite - 2) ones
    assert s.mean == pytest.approx((finite - 2 - 3) / finite, rel=1e-14)
    assert s.norm == pytest.approx(math.sqrt(finite - 2 + 9), rel=1e-14)
    assert s.histogram.total == finite


def test_negative_nan_bit_pattern_is_counted_as_nan():
    x = torch.ones(BIG)
    x.view(torch.int32)[7] = -4194304  # 0xFFC00000: the NaN x86 makes for 0/0, sign bit set
    s = tensor_stats(x)
    assert (s.nans, s.min, s.max, s.histogram.total) == (1, 1.0, 1.0, BIG - 1)


@pytest.mark.parametrize("numel", [6, BIG])
def test_integer_dtype(numel):
    x = torch.arange(numel, dtype=torch.int64) - 2  # -2, -1, 0, 1, ..., numel - 3
    s = tensor_stats(x)
    assert (s.min, s.max, s.zeros) == (-2.0, numel - 3.0, 1)
    assert s.mean == pytest.approx((numel - 5) / 2, rel=1e-14)  # mean of an arithmetic run: (first + last) / 2
    exact_median = np.percentile(x.numpy(), 50)
    if numel <= stats.EXACT_PERCENTILE_NUMEL:
        assert s.percentiles["p50"] == exact_median
    else:  # from the histogram: within one bf16 ulp, 2**(10 - 7) = 8 for a median of 2046 in [2**10, 2**11)
        assert abs(s.percentiles["p50"] - exact_median) < 8


@pytest.mark.parametrize("numel", [10, BIG + 1])
def test_bool_dtype(numel):
    x = torch.zeros(numel, dtype=torch.bool)
    x[: numel // 2] = True
    s = tensor_stats(x)
    assert (s.zeros, s.min, s.max) == (numel - numel // 2, 0.0, 1.0)
    assert s.mean == pytest.approx((numel // 2) / numel, rel=1e-14)
    assert s.percentiles_exact  # 0 and 1 are bf16 codes: percentiles from the histogram are exact


def test_fp16_upcast_per_chunk():
    torch.manual_seed(0)
    x = torch.randn(BIG * 3, dtype=torch.float16)
    s = tensor_stats(x)
    ref = x.double()
    assert s.mean == pytest.approx(ref.mean().item(), rel=1e-12)
    assert s.std == pytest.approx(ref.std(correction=0).item(), rel=1e-12)
    assert (s.min, s.max) == (ref.min().item(), ref.max().item())


def test_bf16_codes_give_exact_statistics():
    torch.manual_seed(1)
    x = torch.randn(BIG * 5).bfloat16()
    x[9] = float("nan")
    x[10] = float("inf")
    s = tensor_stats(x)
    ref = x.double()[torch.isfinite(x.double())].numpy()
    assert (s.nans, s.posinfs, s.numel) == (1, 1, x.numel())
    assert s.mean == pytest.approx(ref.mean(), rel=1e-12)
    assert s.std == pytest.approx(ref.std(), rel=1e-12)
    assert s.norm == pytest.approx(np.linalg.norm(ref), rel=1e-12)
    assert s.percentiles_exact
    np.testing.assert_allclose(list(s.percentiles.values()), np.percentile(ref, stats.PERCENTILES), rtol=1e-12)


def test_complex_magnitude():
    x = torch.tensor([3 + 4j, 0j, -5j, 1 + 0j], dtype=torch.complex64)  # magnitudes 5, 0, 5, 1
    s = tensor_stats(x)
    assert (s.min, s.max, s.zeros, s.mean) == (0.0, 5.0, 1, 2.75)  # (5 + 0 + 5 + 1) / 4
    assert s.norm == pytest.approx(math.sqrt(51), rel=1e-15)  # 25 + 0 + 25 + 1


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_quantized_tensor_is_dequantised():
    x = torch.quantize_per_tensor(torch.tensor([-1.0, 0.0, 0.5, 2.0]), scale=0.5, zero_point=10, dtype=torch.qint8)
    s = tensor_stats(x)
    assert (s.min, s.max, s.mean, s.zeros) == (-1.0, 2.0, 0.375, 1)  # (-1 + 0 + 0.5 + 2) / 4


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="this torch has no float8")
def test_fp8_upcast():
    x = torch.tensor([0.5, -1.0, 448.0, 0.0]).to(torch.float8_e4m3fn)
    s = tensor_stats(x)
    assert (s.min, s.max, s.zeros, s.mean) == (-1.0, 448.0, 1, 111.875)  # (0.5 - 1 + 448 + 0) / 4


def test_fp64_values_beyond_fp32_range_stay_in_the_histogram():
    x = torch.ones(BIG, dtype=torch.float64)
    x[0] = 1e300
    s = tensor_stats(x)
    assert s.max == 1e300
    assert s.histogram.total == BIG
    assert not s.percentiles_exact  # 1e300 is not an fp32 value


def test_as_row_has_exactly_the_stat_columns():
    row = tensor_stats(torch.arange(5.0)).as_row()
    assert tuple(row) == STAT_COLUMNS
    assert set(PERCENTILE_COLUMNS) <= set(row)
    assert (row["infs"], row["p50"], row["p100"]) == (0, 2.0, 4.0)


def test_sparse_tensor_is_refused_with_its_layout():
    with pytest.raises(ValueError, match="dense tensor.*sparse"):
        tensor_stats(torch.eye(3).to_sparse())


def test_unavailable_device_is_refused_before_any_work():
    with pytest.raises(UsageError, match="device 'npu' is not a torch device|device 'npu' is not supported"):
        tensor_stats(torch.ones(3), device="npu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="'cuda:0' is not available here: use --device cpu"):
            tensor_stats(torch.ones(3), device="cuda:0")


def test_importing_the_engine_loads_neither_numba_nor_pandas():
    # numba costs ~1 s of start-up: only the first tensor pays it, not `ckptboard inspect` or the dashboard
    code = ("import sys, ckptboard.core.stats, ckptboard.core.updates; "
            "print(sorted({'numba', 'pandas'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
