"""The exact merge of per-part statistics: a tensor cut into parts, each accumulated on its own and merged, gives
the statistics of the whole (counts, extremes, histogram and percentiles exactly; std, abs_mean and norm to 1e-12 relative, the mean
to 1e-12 of the RMS; bf16's exactly), and the update sums of parts add up to the whole's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ckptboard.core.stats import EXACT_PERCENTILE_NUMEL, accumulate, finish, tensor_stats
from ckptboard.core.updates import update_from_sums, update_stats, update_sums

_FLOATS = ("mean", "std", "abs_mean", "norm")


def _merged(parts: list[torch.Tensor]):
    acc = accumulate(parts[0])
    for part in parts[1:]:
        acc = acc.merged(accumulate(part))
    return finish(acc)


def _assert_same(whole, merged, rel: float) -> None:
    a, b = whole.as_row(), merged.as_row()
    for name, value in a.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(b[name]), name
        elif name == "mean":  # a difference of sums of the RMS's size: its error is one of the RMS
            assert b[name] == pytest.approx(value, rel=0.0, abs=rel * math.hypot(a["mean"], a["std"])), name
        elif name in _FLOATS:
            assert b[name] == pytest.approx(value, rel=rel, abs=0.0), name
        else:  # counts, min, max and every percentile
            assert b[name] == value, name
    for field in ("lo", "hi", "counts"):
        np.testing.assert_array_equal(getattr(merged.histogram, field), getattr(whole.histogram, field))
    assert merged.percentiles_exact == whole.percentiles_exact


def _tensor(dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(0)
    t = torch.randn(300, 70) * 3 + 1  # 21,000 elements: past EXACT_PERCENTILE_NUMEL, as a split tensor is
    t[5, 3], t[100, 0], t[250, 9], t[17, 2] = float("nan"), float("inf"), float("-inf"), 0.0
    if dtype in (torch.int8, torch.int32):
        return (t.nan_to_num(0.0, 100.0, -100.0) * 10).clamp(-128, 127).to(dtype)
    return t.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int8, torch.int32])
def test_parts_merge_to_the_whole(dtype):
    t = _tensor(dtype)
    assert t.numel() > EXACT_PERCENTILE_NUMEL
    # Uneven parts, one of a single row: as FSDP's row chunks of an odd split.
    _assert_same(tensor_stats(t), _merged([t[:37], t[37:38], t[38:200], t[200:]]), rel=1e-12)


def test_bf16_parts_merge_bit_identically():
    t = _tensor(torch.bfloat16)
    whole, merged = tensor_stats(t), _merged([t[:150], t[150:]])
    _assert_same(whole, merged, rel=0.0)  # every bf16 moment follows from the merged code counts


def test_a_first_part_without_finite_values():
    t = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    t[:100] = float("nan")
    # The whole's shift is 0.0 (its first element is NaN), as is the first part's: the others move to it.
    _assert_same(tensor_stats(t), _merged([t[:100], t[100:2600], t[2600:]]), rel=1e-12)


def test_constant_parts_keep_std_exactly_zero():
    t = torch.full((8192,), 0.1)
    merged = _merged([t[:3000], t[3000:]])
    assert merged.std == 0.0 and merged.mean == merged.min == merged.max == pytest.approx(0.1)


def test_an_empty_part_changes_nothing():
    t = _tensor(torch.float32)
    _assert_same(tensor_stats(t), _merged([t[:0], t]), rel=1e-12)


def test_bf16_and_float_parts_do_not_merge():
    with pytest.raises(ValueError, match="bf16"):
        accumulate(torch.ones(10, dtype=torch.bfloat16)).merged(accumulate(torch.ones(10)))


def test_update_sums_of_parts_add_up_to_the_whole():
    g = torch.Generator().manual_seed(2)
    first, prev = torch.randn(400, 30, generator=g), torch.randn(400, 30, generator=g)
    cur = prev + 0.01 * torch.randn(400, 30, generator=g)
    cuts = [(0, 150), (150, 151), (151, 400)]
    sums = sum(update_sums(prev[a:b], cur[a:b], first[a:b]) for a, b in cuts)
    whole, merged = update_stats(prev, cur, first).as_row(), update_from_sums(sums, True).as_row()
    for name, value in whole.items():
        assert merged[name] == pytest.approx(value, rel=1e-12, abs=0.0), name
