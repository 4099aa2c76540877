"""Compare two checkpoints: added/removed/reshaped, exact changes from the updates table, else a lower bound."""

import dataclasses
import math

import numpy as np
import pytest

from ckptboard.core.errors import UsageError
from ckptboard.core.health import compare_checkpoints
from ckptboard.dashboard.figures.compare import compare_figure
from _fixtures_tables import synthetic_tables


@pytest.fixture(scope="module")
def tables():
    return synthetic_tables(n_checkpoints=6, n_tensors=16, runs=2)


def _row(df, **where):
    for k, v in where.items():
        df = df[df[k] == v]
    assert len(df) == 1
    return df.iloc[0]


def test_consecutive_pair_is_exact(tables):
    res = compare_checkpoints(tables, "run1/ckpt_00003.pt", "run1/ckpt_00004.pt")
    ch = _row(res.changes, name="fc.weight")
    upd = _row(tables.updates, checkpoint="run1/ckpt_00004.pt", name="fc.weight")
    prev = _row(tables.tensors, checkpoint="run1/ckpt_00003.pt", name="fc.weight")
    assert ch["method"] == "exact"
    assert ch["rel_change"] == pytest.approx(upd["update_norm"] / prev["norm"])
    assert res.added == res.removed == res.reshaped == []
    floats = res.changes[~res.changes["counter"]]
    rel = floats["rel_change"].to_numpy()
    assert np.all(rel[:-1] >= rel[1:])  # largest first
    # counters (the fixture's int64 num_batches_tracked) come after every floating tensor
    assert res.changes["counter"].tolist() == sorted(res.changes["counter"].tolist())


def test_counters_are_kept_out_of_the_ranking_chart(tables):
    res = compare_checkpoints(tables, "run1/ckpt_00000.pt", "run1/ckpt_00005.pt")
    counters = set(res.changes.loc[res.changes["counter"], "name"])
    assert counters and all(n.endswith("num_batches_tracked") for n in counters)
    fig = compare_figure(res, top=100)
    drawn = {label for trace in fig.data for label in trace.text}
    assert drawn and not drawn & counters


def test_first_vs_later_is_exact_and_lists_added(tables):
    res = compare_checkpoints(tables, "run1/ckpt_00000.pt", "run1/ckpt_00005.pt")
    assert res.added == ["head.extra.weight"]  # appears at checkpoint 6 // 2 = 3 of run1
    ch = _row(res.changes, name="embed.weight")
    assert ch["method"] == "exact" and ch["rel_change"] == 0.0  # the frozen tensor
    w = _row(res.changes, name="fc.weight")
    dist = _row(tables.updates, checkpoint="run1/ckpt_00005.pt", name="fc.weight")["dist_from_first"]
    assert w["abs_change"] == pytest.approx(dist)


def test_other_pairs_are_a_mean_std_lower_bound(tables):
    res = compare_checkpoints(tables, "run0/ckpt_00001.pt", "run1/ckpt_00004.pt")
    ch = _row(res.changes, name="fc.weight")
    a = _row(tables.tensors, checkpoint="run0/ckpt_00001.pt", name="fc.weight")
    b = _row(tables.tensors, checkpoint="run1/ckpt_00004.pt", name="fc.weight")
    bound = math.sqrt(160 * ((b["mean"] - a["mean"]) ** 2 + (b["std"] - a["std"]) ** 2))  # numel 10*16
    assert ch["method"] == "lower bound"
    assert ch["rel_change"] == pytest.approx(bound / a["norm"])


def test_nan_norm_sorts_last_and_figure_skips_it(tables):
    res = compare_checkpoints(tables, "run0/ckpt_00005.pt", "run0/ckpt_00001.pt")  # a holds fc.bias NaNs
    floats = res.changes[~res.changes["counter"]]  # counters are ranked after the floats, NaN or not
    assert floats["name"].iloc[-1] == "fc.bias" and math.isnan(floats["rel_change"].iloc[-1])
    fig = compare_figure(res, top=100)
    labels = [y for t in fig.data for y in t.y]
    assert "fc.bias" not in labels and len(labels) == len(floats) - 1


def test_figure_top_bars_largest_first(tables):
    res = compare_checkpoints(tables, "run0/ckpt_00001.pt", "run1/ckpt_00004.pt")
    fig = compare_figure(res, top=5)
    assert sum(len(t.x) for t in fig.data) == 5
    top5 = res.changes["name"].head(5).tolist()
    assert list(fig.layout.yaxis.categoryarray) == top5[::-1]  # drawn bottom-up: largest at the top


def test_same_checkpoint_and_unknown(tables):
    res = compare_checkpoints(tables, "single/ckpt_00000.pt", "single/ckpt_00000.pt")
    assert (res.changes["rel_change"] == 0).all() and set(res.changes["method"]) == {"exact"}
    with pytest.raises(UsageError, match="'run0/ckpt_broken.pt' has no statistics in the cache"):
        compare_checkpoints(tables, "run0/ckpt_broken.pt", "run0/ckpt_00000.pt")


def test_reshaped_tensor_listed_not_compared(tables):
    t = tables.tensors.copy()
    t.loc[(t["checkpoint"] == "run0/ckpt_00001.pt") & (t["name"] == "fc.weight"), "shape"] = "[16, 10]"
    res = compare_checkpoints(dataclasses.replace(tables, tensors=t), "run0/ckpt_00000.pt", "run0/ckpt_00001.pt")
    assert res.reshaped == [("fc.weight", "[10, 16]", "[16, 10]")]
    assert "fc.weight" not in set(res.changes["name"])
