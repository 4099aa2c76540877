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


def _planted_series(root):
    """Three torch.save runs of a real model trained by SGD, with every check's problem planted:

    - ``a``: a NaN in ``fc.weight`` at its second (last) checkpoint, channel 1 of ``bn`` dead (running_var 1e-9)
      there; ``embed`` and eight ``frozen.*`` layers never train (unchanged; ``fc.bias`` barely does: BatchNorm cancels
      its gradient), so its ten largest ratios end in a tie at 0.0 that row order breaks;
    - ``b``: ``head.weight`` grown 20× at its last checkpoint (exploding at factor 10);
    - ``c``: its last checkpoint a model without the BatchNorm layer (its last batchnorm rows are a step earlier);
    - ``d`` and ``e``: an MLP with every parameter moving, at learning rates 0.3 and 0.01 (runs whose ten largest
      ratios lie far apart, with no unchanged tensor to read whole).
    """
    import torch
    from torch import nn

    def model():
        net = nn.Sequential()
        net.add_module("embed", nn.Embedding(5, 4))
        net.add_module("fc", nn.Linear(4, 3))
        net.add_module("bn", nn.BatchNorm1d(3))
        net.add_module("head", nn.Linear(3, 2, bias=False))
        net.add_module("frozen", nn.Sequential(*(nn.Linear(2, 2, bias=False) for _ in range(8))))
        return net

    torch.manual_seed(0)
    for run, n in (("a", 2), ("b", 4), ("c", 3)):
        net = model()
        trained = [net.fc, net.bn, net.head]
        optimizer = torch.optim.SGD([p for m in trained for p in m.parameters()], lr=0.1)
        folder = root / run
        folder.mkdir()
        for i in range(n):
            if i:
                for _ in range(2):
                    x = net.fc(net.embed(torch.randint(0, 5, (8,))))
                    loss = net.head(torch.relu(net.bn(x))).square().mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            state = {k: v.clone() for k, v in net.state_dict().items()}
            if run == "a" and i == 1:
                state["fc.weight"][0, 0] = float("nan")
                state["bn.running_var"][1] = 1e-9
            if run == "b" and i == n - 1:
                state["head.weight"] *= 20.0
            if run == "c" and i == n - 1:
                state = {k: v for k, v in state.items() if not k.startswith("bn.")}
            torch.save(state, folder / f"step_{(i + 1) * 10:03d}.pt")
    for run, lr in (("d", 0.3), ("e", 0.01)):
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        (root / run).mkdir()
        for i in range(4):
            if i:
                loss = net(torch.randn(16, 4)).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            torch.save(net.state_dict(), root / run / f"step_{(i + 1) * 10:03d}.pt")


def test_candidate_rows_find_what_the_whole_tables_find_at_any_threshold_and_step_range(tmp_path):
    """Old path (the pandas checks over the selection's whole tables) and new path (over the dataset's candidate rows)
    agree on a real series with every check firing, for thresholds and step ranges either side of the planted values."""
    from ckptboard.core.dataset import Selection, StatsDataset
    from ckptboard.core.summarize import summarize
    from ckptboard.dashboard.views.health import _HEALTH_COLUMNS

    _planted_series(tmp_path)
    summarize(tmp_path)
    dataset = StatsDataset(tmp_path)
    fired = set()
    for runs, steps in [(None, None), (None, (10, 30)), (None, (20, 40)), (("d", "e"), None)]:
        selection = Selection(runs=runs, steps=steps, columns=_HEALTH_COLUMNS)
        whole = dataset.tables(Selection(runs=runs, steps=steps))
        for factor in (1.05, 10.0, 1e6):
            for dead_var in (1e-8, 1e3):
                expected = health_table(whole, dead_var=dead_var, explode_factor=factor)
                found = health_table(dataset.view(selection), dead_var=dead_var, explode_factor=factor)
                pd.testing.assert_frame_equal(found, expected)
                fired |= set(expected["check"])
    assert fired == {"non-finite", "exploding-norm", "dead-bn-channel", "unchanged-across-run",
                     "largest-update-ratio"}
    h = health_table(dataset.view(Selection(columns=_HEALTH_COLUMNS)))
    # run a: one update per parameter, the 9 frozen ones 0.0 (fc.weight's ratio is NaN, bn.bias's too: its first
    # norm is 0): the tenth largest is a 0.0 tied with zeros left out, and the ten are the positive ones and zeros
    u = dataset.tables().updates.query("run == 'a' and kind == 'parameter'")["update_ratio"]
    positive, zero = int((u > 0).sum()), int((u == 0).sum())
    assert positive < LARGEST_UPDATES < positive + zero
    top = h[(h["check"] == "largest-update-ratio") & (h["run"] == "a")]
    assert len(top) == LARGEST_UPDATES and (top["value"] == 0.0).sum() == LARGEST_UPDATES - positive
    assert h.query("check == 'dead-bn-channel'")[["run", "name", "step"]].values.tolist() == [["a", "bn", 20]]
    assert h.query("check == 'exploding-norm'")[["run", "name", "step"]].values.tolist() == [["b", "head.weight", 40]]


def test_a_new_threshold_reads_only_the_candidates(tmp_path):
    """The threshold-free scans are kept with the dataset: a second threshold reads no whole column of a table."""
    from ckptboard.core.dataset import Selection, StatsDataset
    from ckptboard.core.summarize import summarize
    from ckptboard.dashboard.views.health import _HEALTH_COLUMNS

    _planted_series(tmp_path)
    summarize(tmp_path)
    dataset = StatsDataset(tmp_path)
    reads = []
    real_read = dataset.read

    def counted(table, selection=Selection(), columns=None, **kwargs):
        result = real_read(table, selection, columns, **kwargs)
        reads.append((str(table), columns, kwargs.get("where") is not None, result.num_rows))
        return result

    dataset.read = counted
    view = dataset.view(Selection(columns=_HEALTH_COLUMNS))
    health_table(view, explode_factor=10.0)
    scans = [r for r in reads if r[0] in ("tensors", "updates") and r[1] is not None]
    assert sorted(s[0] for s in scans) == ["tensors", "updates"]  # one scan of each (side by side), a few columns
    reads.clear()
    health_table(view, explode_factor=1.05)
    assert not [r for r in reads if r[0] in ("tensors", "updates") and r[1] is not None]


def test_the_view_lists_the_first_findings_and_counts_the_rest(tmp_path, monkeypatch):
    """Past SHOWN_FINDINGS the table and the picker hold the first findings (most severe first) and a caption says how
    many more there are."""
    from _fixtures_app import app_test, write_tiny_run
    from ckptboard.core.load import load_stats
    from ckptboard.core.summarize import summarize
    from ckptboard.dashboard.views import View
    from ckptboard.dashboard.views import health as view

    write_tiny_run(tmp_path / "tiny", [10, 20, 30])
    summarize(tmp_path)
    expected = health_table(load_stats(tmp_path))
    assert len(expected) > 3
    monkeypatch.setattr(view, "SHOWN_FINDINGS", 3)
    at = app_test(str(tmp_path))
    at.session_state["view"] = View.HEALTH
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    pd.testing.assert_frame_equal(at.dataframe(key="health_table").value.reset_index(drop=True), expected.head(3))
    assert len(at.selectbox(key="health_finding").options) == 3
    assert [c.value for c in at.caption if "findings" in c.value] == [
        f"Listing the first 3 of {len(expected)} findings (errors, then warnings, then info; by check, run and value): "
        f"raise the thresholds or choose fewer runs to list the other {len(expected) - 3}."]
