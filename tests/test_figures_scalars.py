"""Scalars: TensorBoard's debiased EMA, per-tensor and per-module series, runs overlaid, decimation."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from ckptboard.core.errors import UsageError
from ckptboard.dashboard.figures.scalars import STATISTICS, scalar_figure, scalar_series, smooth
from _fixtures_tables import STEP_EVERY, synthetic_tables


@pytest.fixture(scope="module")
def tables():
    return synthetic_tables(n_checkpoints=6, n_tensors=16, runs=2)


def _rows(tables, run, name, table="tensors"):
    df = getattr(tables, table)
    return df[(df["run"] == run) & (df["name"] == name)].sort_values("step")


def test_smooth_debiased_ema_exact():
    # w = 0.5: last 0.5 -> 0.5/(1-0.5)=1; last 0.25+1=1.25 -> 1.25/0.75; last 0.625+1.5=2.125 -> 2.125/0.875
    assert smooth([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 1.25 / 0.75, 2.125 / 0.875])


def test_smooth_nan_passes_through_without_poisoning():
    out = smooth([1.0, float("nan"), 3.0, float("inf")], 0.5)
    # the NaN and Inf stay; 3.0 is the 2nd finite value: last 0.5 then 0.25+1.5=1.75 -> 1.75/0.75
    assert out[0] == 1.0 and math.isnan(out[1]) and math.isinf(out[3])
    assert out[2] == pytest.approx(1.75 / 0.75)


def test_smooth_constant_zero_weight_and_bounds():
    assert smooth([2.0, 2.0, 2.0], 0.9).tolist() == [2.0, 2.0, 2.0]
    assert smooth([3.0, 1.0], 0.0).tolist() == [3.0, 1.0]
    with pytest.raises(UsageError, match=r"smoothing weight must be in \[0, 1\), got 1.0"):
        smooth([1.0], 1.0)


def test_tensor_series_two_runs_overlaid(tables):
    fig = scalar_figure(tables, "norm", tensors=["fc.weight"], runs=["run0", "run1"])
    lines = _lines(fig)
    assert [t.name for t in lines] == ["fc.weight · run0", "fc.weight · run1"]
    expected = _rows(tables, "run1", "fc.weight")["norm"].to_numpy()
    assert np.allclose(lines[1].y, expected)
    assert list(lines[0].x) == [i * STEP_EVERY for i in range(6)]
    assert fig.layout.yaxis.title.text == STATISTICS["norm"]


def _lines(fig):
    return [t for t in fig.data if t.meta and "raw" in t.meta]


def test_several_runs_colour_per_run_dash_per_tensor_and_a_legend_entry_each(tables):
    fig = scalar_figure(tables, "norm", tensors=["fc.weight", "fc.bias"], runs=["run0", "run1"])
    lines = _lines(fig)
    assert len(lines) == 4 and not any(t.showlegend for t in lines)  # the legend names runs and tensors instead
    colour = {(t.meta["run"], t.meta["series"]): t.line.color for t in lines}
    dash = {(t.meta["run"], t.meta["series"]): t.line.dash for t in lines}
    assert colour["run0", "fc.bias"] == colour["run0", "fc.weight"] != colour["run1", "fc.weight"]
    assert dash["run0", "fc.bias"] == dash["run1", "fc.bias"] != dash["run0", "fc.weight"]
    legend = [(t.meta["legend"], t.name) for t in fig.data if t.meta and "legend" in t.meta]
    assert legend == [("run", "run0"), ("run", "run1"), ("series", "fc.bias"), ("series", "fc.weight")]
    # 2 series + 2 runs + 2 group titles = 6 rows of 24 px + 200 = 344 < 460: the minimum height
    assert fig.layout.height == 460


def test_legend_height_grows_with_twenty_runs():
    tables = synthetic_tables(n_checkpoints=3, n_tensors=4, runs=20)
    runs = sorted(tables.checkpoints["run"].unique())
    fig = scalar_figure(tables, "norm", tensors=["fc.weight"], runs=runs)
    assert {t.name for t in fig.data if t.meta and t.meta.get("legend") == "run"} == set(runs)
    # 20 runs and the fixture's one-checkpoint "single" run: 1 series + 21 runs + 2 titles = 24 entries,
    # 24 * 24 + 200 = 776 px, so no legend entry scrolls away
    assert len(runs) == 21 and fig.layout.height == 776


def test_one_tensor_one_name_across_formats(tables):
    # A Lightning run holds its weights under group "state_dict", a safetensors run under ""; with one group per
    # checkpoint the group is not part of the line's name, so both runs draw "fc.weight".
    t = tables.tensors
    lightning = t.assign(group=np.where(t["run"] == "run0", "state_dict", t["group"]))
    tables2 = dataclasses.replace(tables, tensors=lightning)
    series = scalar_series(tables2, "norm", tensors=["fc.weight"], runs=["run0", "run1"])
    assert sorted(series["series"].unique()) == ["fc.weight"]
    assert sorted(series["run"].unique()) == ["run0", "run1"]


def test_smoothing_adds_faint_raw_trace(tables):
    fig = scalar_figure(tables, "norm", tensors=["fc.weight"], runs=["run0"], smoothing=0.6, log_y=True)
    raw, smoothed = _lines(fig)
    assert raw.meta["raw"] and not smoothed.meta["raw"] and raw.opacity == 0.25
    assert np.allclose(smoothed.y, smooth(raw.y, 0.6))
    assert fig.layout.yaxis.type == "log"


def test_max_abs_is_derived(tables):
    rows = _rows(tables, "run0", "embed.weight")
    data = scalar_series(tables, "max_abs", tensors=["embed.weight"], runs=["run0"])
    assert np.allclose(data["value"], np.fmax(rows["min"].abs(), rows["max"].abs()))


def test_module_norm_is_root_of_summed_squares_and_nan_propagates(tables):
    data = scalar_series(tables, "norm", modules=["fc"], runs=["run0"])
    w, b = _rows(tables, "run0", "fc.weight")["norm"].to_numpy(), _rows(tables, "run0", "fc.bias")["norm"].to_numpy()
    # first 3 checkpoints: sqrt(|w|^2 + |b|^2); the last 3 hold NaNs in fc.bias, so the module norm is NaN
    assert np.allclose(data["value"][:3], np.sqrt(w[:3] ** 2 + b[:3] ** 2))
    assert data["value"][3:].isna().all()


def test_module_update_ratio_uses_previous_norms(tables):
    data = scalar_series(tables, "update_ratio", modules=["block0"], runs=["run1"])
    names = ["block0.conv.weight", "block0.bn.weight", "block0.bn.bias"]  # parameters only, buffers left out
    upd = [_rows(tables, "run1", n, "updates")["update_norm"].to_numpy() for n in names]
    norms = [_rows(tables, "run1", n)["norm"].to_numpy()[:-1] for n in names]  # at the previous checkpoint
    expected = np.sqrt(sum(u**2 for u in upd)) / np.sqrt(sum(n**2 for n in norms))
    assert data["step"].tolist() == [i * STEP_EVERY for i in range(1, 6)]
    assert np.allclose(data["value"], expected)


def test_module_pooled_std(tables):
    data = scalar_series(tables, "std", modules=["fc"], runs=["run1"])
    w, b = _rows(tables, "run1", "fc.weight").iloc[0], _rows(tables, "run1", "fc.bias").iloc[0]
    n = w["numel"] + b["numel"]  # 160 + 10
    mean = (w["numel"] * w["mean"] + b["numel"] * b["mean"]) / n
    second = (w["numel"] * (w["std"] ** 2 + w["mean"] ** 2) + b["numel"] * (b["std"] ** 2 + b["mean"] ** 2)) / n
    assert data["value"].iloc[0] == pytest.approx(math.sqrt(second - mean**2))


def test_default_is_all_parameters_and_one_checkpoint_run(tables):
    fig = scalar_figure(tables, "norm", runs=["single"])
    assert [t.name for t in fig.data] == ["(all parameters)"]
    assert list(fig.data[0].x) == [0]
    # a one-checkpoint run has no updates: an empty figure, not an error
    empty = scalar_figure(tables, "update_ratio", runs=["single"])
    assert len(empty.data) == 0 and "No update ratio" in empty.layout.annotations[0].text


def test_step_range_and_decimation():
    tables = synthetic_tables(n_checkpoints=40, n_tensors=8, runs=1)
    fig = scalar_figure(tables, "mean", tensors=["fc.weight"], runs=["run0"], max_points=10,
                        step_range=(5 * STEP_EVERY, 30 * STEP_EVERY))
    x = list(fig.data[0].x)
    assert len(x) == 10 and x[0] == 5 * STEP_EVERY and x[-1] == 30 * STEP_EVERY


def test_unknown_statistic_and_percentile_module(tables):
    with pytest.raises(UsageError, match="unknown statistic 'bogus'"):
        scalar_figure(tables, "bogus")
    with pytest.raises(UsageError, match="'p50' cannot be aggregated over a module"):
        scalar_figure(tables, "p50", modules=["fc"])
    assert len(scalar_figure(tables, "p50", tensors=["fc.weight"], runs=["run0"]).data) == 1


def test_modules_never_mix_groups(tables):
    # a copy of run1's tensors as an "ema" group: the module gets one series per group, each the same value
    t, u = tables.tensors, tables.updates
    two = dataclasses.replace(
        tables,
        tensors=pd.concat([t, t[t["run"] == "run1"].assign(group="ema")], ignore_index=True),
        updates=pd.concat([u, u[u["run"] == "run1"].assign(group="ema")], ignore_index=True),
    )
    data = scalar_series(two, "norm", modules=["fc"], runs=["run1"])
    assert sorted(set(data["series"])) == ["ema:fc", "fc"]
    assert np.allclose(data[data["series"] == "fc"]["value"], data[data["series"] == "ema:fc"]["value"])
    only = scalar_series(two, "update_ratio", modules=["ema:fc"], runs=["run1"])
    assert set(only["series"]) == {"ema:fc"}


def test_training_scalar_figure_draws_each_name_per_run():
    from ckptboard.dashboard.figures.training import step_extent, training_names, training_scalar_figure

    tables = synthetic_tables(n_checkpoints=5, n_tensors=4, runs=2, seed=3)
    assert training_names(tables) == ["loss", "learning_rate"]  # loss-like names first
    fig = training_scalar_figure(tables, ["loss"], runs=["run0", "run1"], smoothing=0.5)
    smoothed = [t for t in _lines(fig) if not t.meta["raw"]]  # (the legend's run/name entries left out)
    assert [t.name for t in smoothed] == ["loss · run0", "loss · run1"]
    steps = tables.checkpoints[tables.checkpoints["run"] == "run0"]["step"].dropna().tolist()
    assert list(smoothed[0].x) == sorted(steps)
    assert step_extent(tables, ["run0"]) == (min(steps), max(steps))


@pytest.fixture(scope="module")
def samples_dataset(tmp_path_factory):
    from _fixtures_app import summarized_samples
    from ckptboard.core.dataset import StatsDataset

    return StatsDataset(summarized_samples(tmp_path_factory, tmp_path_factory.mktemp("scalars") / "samples"))


@pytest.mark.parametrize("stat", list(STATISTICS))
def test_scalar_columns_are_all_the_figure_reads(samples_dataset, stat):
    """The view reads only ``scalar_columns(stat)``: the same chart as from every column, for tensors and modules."""
    from ckptboard.core.dataset import Selection
    from ckptboard.dashboard.figures.scalars import scalar_columns

    tensors = ["conv2.weight", "bn2.bias", "head.weight"]  # SmallCNN (sample_ckpts/model.py)
    for narrow, kwargs in [({"names": tensors}, {"tensors": tensors}), ({"modules": ["conv2", "bn2"]},
                                                                         {"modules": ["conv2", "bn2"]}),
                           ({}, {"modules": [":conv2"]})]:  # ``group:module`` reads every tensor
        whole = samples_dataset.view(Selection(**narrow))
        narrowed = samples_dataset.view(Selection(**narrow, columns=scalar_columns(stat)))
        assert scalar_figure(narrowed, stat, **kwargs).to_json() == scalar_figure(whole, stat, **kwargs).to_json()
