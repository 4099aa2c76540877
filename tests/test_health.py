"""Health findings: every check fires on the fixture's planted problem, with the threshold honoured."""

import dataclasses

import pandas as pd
import pytest

from ckptboard.core.health import HEALTH_COLUMNS, LARGEST_UPDATES, frozen_tensors, health_table
from ckptboard.core.schema import UPDATE_COLUMNS, StatsTables
from _fixtures_tables import synthetic_tables


@pytest.fixture(scope="module")
def tables():
    return synthetic_tables(n_checkpoints=6, n_tensors=16, runs=2)


def test_columns_and_severity_order(tables):
    h = health_table(tables)
    assert list(h.columns) == list(HEALTH_COLUMNS)
    order = {"error": 0, "warning": 1, "info": 2}
    assert h["severity"].map(order).is_monotonic_increasing


def test_non_finite_row_at_first_bad_checkpoint(tables):
    h = health_table(tables)
    nf = h[h["check"] == "non-finite"]
    assert nf[["run", "name", "step", "value"]].values.tolist() == [["run0", "fc.bias", 300, 2]]
    assert nf["detail"].iloc[0] == "2 NaN, 0 ±Inf at step 300; non-finite in 3 of 6 checkpoints"


def test_dead_channel_and_frozen_parameter(tables):
    h = health_table(tables)
    dead = h[h["check"] == "dead-bn-channel"]
    assert dead[["run", "name", "step", "value"]].values.tolist() == [["run0", "block0.bn", 500, 1.0]]
    assert dead["detail"].iloc[0] == "1 of 8 channels have running_var < 1e-08: [0]"
    assert health_table(tables, dead_var=1e-12).query("check == 'dead-bn-channel'").empty
    same = h[h["check"] == "unchanged-across-run"]
    assert sorted(same["run"]) == ["run0", "run1"] and set(same["name"]) == {"embed.weight"}
    assert set(same["severity"]) == {"info"}  # classified frozen: expected


def test_exploding_norm_threshold(tables):
    assert health_table(tables).query("check == 'exploding-norm'").empty  # stds grow 20 %, far below 10x
    h = health_table(tables, explode_factor=1.05)
    rows = h[h["check"] == "exploding-norm"]
    assert len(rows) > 0 and (rows["value"] > 1.05).all()
    assert "embed.weight" not in set(rows["name"])  # frozen: ratio exactly 1


def test_exploding_norm_skips_parameters_that_start_near_zero():
    tables = synthetic_tables(n_checkpoints=3, n_tensors=4, runs=1)
    t = tables.tensors
    first, last = t["step"] == t["step"].min(), t["step"] == t["step"].max()
    bias = t["name"] == t["name"].iloc[0]
    t.loc[bias, "numel"] = 16
    # RMS at the first checkpoint 0.02/√16 = 0.005 < 1e-2; grows 50x to 1.0: a bias learning, not an explosion.
    t.loc[bias & first, "norm"], t.loc[bias & last, "norm"] = 0.02, 1.0
    assert bias.any() and health_table(tables).query("check == 'exploding-norm'").empty
    # From RMS 0.4/√16 = 0.1 to 50x that: flagged, at a ratio of exactly 20/0.4 = 50.
    t.loc[bias & first, "norm"], t.loc[bias & last, "norm"] = 0.4, 20.0
    rows = health_table(tables).query("check == 'exploding-norm'")
    assert rows["value"].tolist() == [50.0]


def test_largest_update_ratios_are_parameters_per_run(tables):
    h = health_table(tables)
    top = h[h["check"] == "largest-update-ratio"]
    assert top.groupby("run").size().to_dict() == {"run0": LARGEST_UPDATES, "run1": LARGEST_UPDATES}
    u = tables.updates[(tables.updates["run"] == "run1") & (tables.updates["kind"] == "parameter")]
    assert top[top["run"] == "run1"]["value"].iloc[0] == u["update_ratio"].max()


def test_empty_tables_have_no_findings():
    assert health_table(StatsTables.empty()).empty


def test_unchanged_and_frozen_share_one_test_and_a_nan_update_proves_nothing():
    # Two parameters over three checkpoints (two updates each): "w" never moves, "v" has a NaN update.
    updates = pd.DataFrame({
        "run": ["r"] * 4, "checkpoint": ["c1", "c2", "c1", "c2"], "step": [1, 2, 1, 2],
        "prev_checkpoint": ["c0", "c1", "c0", "c1"], "prev_step": [0, 1, 0, 1], "group": [""] * 4,
        "name": ["w", "w", "v", "v"], "module": [""] * 4, "kind": ["parameter"] * 4,
        "update_norm": [0.0, 0.0, 0.0, float("nan")],
    }).reindex(columns=list(UPDATE_COLUMNS))
    tables = dataclasses.replace(StatsTables.empty(), updates=updates)
    unchanged = health_table(tables).query("check == 'unchanged-across-run'")
    assert unchanged[["name", "checkpoint", "step"]].values.tolist() == [["w", "c2", 2]]
    assert unchanged["detail"].tolist() == ["identical in all 3 checkpoints"]  # 2 updates + the first checkpoint
    assert frozen_tensors(tables)[["name", "n_updates"]].values.tolist() == [["w", 2]]


def test_candidate_rows_find_non_finite_and_exploding_as_the_whole_tables_do(tmp_path):
    """A real torch.save series with a NaN planted at the second checkpoint and a weight grown 20×: the findings from
    the dataset's candidate rows equal those of the whole tables."""
    import torch
    from torch import nn

    from ckptboard.core.dataset import StatsDataset
    from ckptboard.core.load import load_stats
    from ckptboard.core.summarize import summarize
    from ckptboard.dashboard.views.health import _HEALTH_COLUMNS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2, 3):
        with torch.no_grad():
            model[2].weight.mul_(20.0 if step == 3 else 1.0)  # 20× its first norm: exploding at factor 10
            model[0].bias.add_(0.1)
            if step == 2:
                model[0].weight[0, 0] = float("nan")
        torch.save(model.state_dict(), run / f"step_{step}.pt")
    summarize(tmp_path)
    view, whole = StatsDataset(tmp_path).view().narrow(columns=_HEALTH_COLUMNS), load_stats(tmp_path)
    expected = health_table(whole)
    assert {"non-finite", "exploding-norm"} <= set(expected["check"])
    pd.testing.assert_frame_equal(health_table(view), expected)
