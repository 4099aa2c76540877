"""Histograms (offset and overlay, one common binning) and the distribution view's percentile bands."""

import numpy as np
import pandas as pd
import pytest

from ckptboard.core.errors import UsageError
from ckptboard.core.schema import PERCENTILE_COLUMNS, TENSOR_COLUMNS, StatsTables
from ckptboard.dashboard.figures.histograms import (
    DISTRIBUTION_BANDS,
    common_edges,
    distribution_figure,
    histogram_figure,
)
from _fixtures_tables import synthetic_tables


def _hand_tables() -> StatsTables:
    """One tensor ``w`` at steps 0, 10, 20: two bins, one wide bin, then all NaN (no bins)."""
    tables = StatsTables.empty()
    tables.histograms = pd.DataFrame({
        "run": "r", "checkpoint": ["r/a.pt", "r/b.pt", "r/c.pt"], "step": [0, 10, 20], "group": "", "name": "w",
        "lo": [[0.0, 1.0], [1.0], []], "hi": [[1.0, 2.0], [3.0], []], "counts": [[2, 2], [4], []],
    })
    rows = []
    for i, (ck, step) in enumerate([("r/a.pt", 0), ("r/b.pt", 10), ("r/c.pt", 20)]):
        row = dict.fromkeys(TENSOR_COLUMNS, 0)
        row.update(run="r", checkpoint=ck, step=step, group="", name="w", module="", kind="parameter")
        for j, col in enumerate(PERCENTILE_COLUMNS):  # p_j = j + 100 * i, NaN at the all-NaN step
            row[col] = np.nan if step == 20 else j + 100.0 * i
        rows.append(row)
    tables.tensors = pd.DataFrame(rows, columns=list(TENSOR_COLUMNS))
    return tables


def test_common_edges_union_and_widening():
    assert common_edges([[0.0, 1.0], [1.0], []], [[1.0, 2.0], [3.0], []], 3).tolist() == [0.0, 1.0, 2.0, 3.0]
    # the same single bin [2, 2.015625) (a bf16 ulp at 2 is 2**-6) at every step: widened to its centre ± 0.5
    edges = common_edges([[2.0], [2.0]], [[2.015625], [2.015625]], 2)
    assert edges == pytest.approx([1.5078125, 2.0078125, 2.5078125])
    # two different single bins are two values: the range is their union, not widened
    assert common_edges([[2.0], [4.0]], [[2.015625], [4.03125]], 1).tolist() == [2.0, 4.03125]
    assert common_edges([[]], [[]], 4) is None


def test_overlay_rebins_every_step_onto_common_edges():
    fig = histogram_figure(_hand_tables(), "r", "", "w", mode="overlay", bins=3)
    # step 20 has no finite values and is left out; edges [0, 1, 2, 3]
    assert [t.meta["step"] for t in fig.data] == [0, 10]
    assert list(fig.data[0].x) == [0.5, 1.5, 2.5]
    assert list(fig.data[0].y) == [2.0, 2.0, 0.0]
    assert list(fig.data[1].y) == [0.0, 2.0, 2.0]  # [1, 3) holding 4, spread evenly over two new bins
    assert fig.data[0].line.color != fig.data[1].line.color  # colour ramp over time


def test_offset_ridges_oldest_first_and_offset_by_step():
    fig = histogram_figure(_hand_tables(), "r", "", "w", mode="offset", bins=3)
    old, new = fig.data
    assert (old.meta["step"], new.meta["step"]) == (0, 10)  # oldest drawn first, i.e. at the back
    assert old.fill == "toself"
    # ridge height = max(0.2 * (10 - 0), spacing 10) = 10 for the tallest count 2: scale 5 per count
    assert list(old.x) == [0.0, 0.5, 1.5, 2.5, 3.0]
    assert list(old.y) == [0.0, -10.0, -10.0, 0.0, 0.0]
    assert list(new.y) == [10.0, 10.0, 0.0, 0.0, 10.0]
    assert fig.layout.yaxis.autorange == "reversed"


def test_histogram_limits_steps_and_rejects_bad_mode():
    tables = synthetic_tables(n_checkpoints=30, n_tensors=8, runs=1)
    fig = histogram_figure(tables, "run0", "", "fc.weight", max_steps=7, bins=20)
    assert len(fig.data) == 7 and len(fig.data[0].x) == 22  # 20 centres + the two outer edges
    assert fig.data[0].meta["step"] == 0 and fig.data[-1].meta["step"] == 2900
    with pytest.raises(UsageError, match="histogram mode must be one of offset, overlay, got 'stacked'"):
        histogram_figure(tables, "run0", "", "fc.weight", mode="stacked")


def test_one_element_and_all_nan_tensors():
    tables = synthetic_tables(n_checkpoints=3, n_tensors=10, runs=1)
    fig = histogram_figure(tables, "run0", "", "block0.bn.num_batches_tracked", mode="overlay", bins=4)
    # values 0, 100, 200 (one bf16 bin each): every step's single count lands in one bin
    assert [float(np.sum(t.y)) for t in fig.data] == pytest.approx([1.0, 1.0, 1.0])
    nan_only = histogram_figure(tables, "run0", "", "fc.bias")  # all 3 checkpoints are in the NaN tail
    assert len(nan_only.data) == 0 and "No finite values" in nan_only.layout.annotations[0].text


def test_distribution_bands_and_median():
    fig = distribution_figure(_hand_tables(), "r", "", "w")
    assert len(fig.data) == 2 * len(DISTRIBUTION_BANDS) + 1
    lower, upper = fig.data[0], fig.data[1]
    # p0 is PERCENTILE_COLUMNS[0] and p100 the last (index 14): at step 10, 0 + 100 and 14 + 100
    assert lower.meta["q"] == 0.0 and upper.meta["q"] == 100.0 and upper.fill == "tonexty"
    assert lower.y[1] == 100.0 and upper.y[1] == 114.0
    inner = fig.data[7]
    assert inner.meta["q"] == 69.15 and inner.y[0] == PERCENTILE_COLUMNS.index("p69_15")
    median = fig.data[-1]
    assert median.name == "median" and median.y[0] == PERCENTILE_COLUMNS.index("p50")
    assert np.isnan(median.y[2])  # the all-NaN step is a gap


def test_distribution_unknown_tensor_is_empty_figure():
    fig = distribution_figure(_hand_tables(), "r", "", "nope")
    assert len(fig.data) == 0


def test_figure_columns_are_all_the_figures_read(tmp_path_factory):
    """The view reads only ``FIGURE_COLUMNS`` of one tensor: the same figures as from every column."""
    from _fixtures_app import summarized_samples
    from ckptboard.core.dataset import Selection, StatsDataset
    from ckptboard.dashboard.figures.histograms import FIGURE_COLUMNS

    dataset = StatsDataset(summarized_samples(tmp_path_factory, tmp_path_factory.mktemp("hist") / "samples"))
    run = "adamw_lr1e-3"  # sample_ckpts/make_samples.py
    for name in ("conv2.weight", "bn2.running_var"):
        whole = dataset.view(Selection(runs=(run,), names=(name,)))
        narrowed = dataset.view(Selection(runs=(run,), names=(name,), columns=FIGURE_COLUMNS))
        assert len(narrowed.tensors.columns) == 14  # run, checkpoint, step, group, name + 9 percentiles
        for figure in (histogram_figure, distribution_figure):
            assert figure(narrowed, run, "", name).to_json() == figure(whole, run, "", name).to_json()
