"""Size & FLOPs figures, tested on ``fig.data``."""

from __future__ import annotations

import pytest
from torch import nn

from _fixtures_size import TiedLM, records_of
from ckptboard.core.errors import UsageError
from ckptboard.core.flops import InputSpec, count_flops
from ckptboard.core.size import size_tree
from ckptboard.dashboard.figures.size import dtype_bars, flops_treemap, module_table, size_treemap


@pytest.fixture
def tree():
    return size_tree(records_of(TiedLM()))


def test_size_treemap_by_bytes(tree):
    fig = size_treemap(tree)
    (trace,) = fig.data
    assert trace.type == "treemap" and trace.branchvalues == "total"
    assert list(trace.ids) == ["(model)", "wte", "block", "block.0", "block.1", "lm_head"]
    assert list(trace.parents) == ["", "(model)", "(model)", "block", "block", "(model)"]
    assert list(trace.labels) == ["(model)", "wte", "block", "0", "1", "lm_head"]
    # wte 40*4 = 160; block.0 20*4 = 80; block.1 params 8*4 + buffers 40 = 72; lm_head tied: 0
    assert list(trace.values) == [312, 160, 152, 80, 72, 0]
    assert "tied tensor" in trace.hovertext[-1]
    # every box carries its value: 312 B under (model), 160 B under wte, ...
    assert list(trace.text) == ["312 B", "160 B", "152 B", "80 B", "72 B", "0 B"]
    assert trace.texttemplate == "%{label}<br>%{text}" and fig.layout.uniformtext.mode == "hide"


def test_size_treemap_honours_the_depth(tree):
    fig = size_treemap(tree, "parameters", max_depth=1)
    (trace,) = fig.data
    assert list(trace.ids) == ["(model)", "wte", "block", "lm_head"]  # block.0 / block.1 are depth 2
    assert list(trace.text) == ["68", "40", "28", "0"]  # wte 40; block 20 + 8; lm_head tied
    assert "depth 1" in fig.layout.title.text


@pytest.mark.parametrize(("metric", "root"), [("parameters", 68), ("elements", 68 + 9), ("numel", 77), ("nbytes", 312)])
def test_size_treemap_metrics_and_sunburst(tree, metric, root):
    fig = size_treemap(tree, metric, chart="sunburst", max_depth=1)
    (trace,) = fig.data
    assert trace.type == "sunburst"
    assert trace.values[0] == root and list(trace.ids) == ["(model)", "wte", "block", "lm_head"]


def test_size_treemap_bad_choices_and_empty(tree):
    with pytest.raises(UsageError, match="size metric 'flops' is not one of bytes, parameters, elements"):
        size_treemap(tree, "flops")
    with pytest.raises(UsageError, match="chart 'pie' is not one of treemap, sunburst"):
        size_treemap(tree, chart="pie")
    assert size_treemap(size_tree([])).layout.meta == {"empty": True}


def test_dtype_bars(tree):
    fig = dtype_bars(tree)
    params, buffers = fig.data
    assert (params.name, list(params.x), list(params.y)) == ("parameters", ["float32", "int64"], [272, 0])
    assert (buffers.name, list(buffers.x), list(buffers.y)) == ("buffers", ["float32", "int64"], [32, 8])
    assert dtype_bars(size_tree([])).layout.meta == {"empty": True}


def test_flops_treemap_boxes_hold_own_flops():
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
    report = count_flops(model, (2, 4))
    (trace,) = flops_treemap(report).data
    assert trace.branchvalues == "remainder"
    assert list(trace.ids) == ["(model)", "0", "1", "1.0", "1.1"]
    # 0: 2*2*4*8 = 128; 1.0: 2*2*8*8 = 256; containers hold nothing of their own
    assert list(trace.values) == [0, 128, 0, 256, 0]
    assert "1 op(s) with no formula counted as 0" in flops_treemap(report).layout.title.text
    (cut,) = flops_treemap(report, chart="sunburst", max_depth=1).data
    assert cut.type == "sunburst" and list(cut.values) == [0, 128, 256]


def test_flops_treemap_without_flops_is_an_empty_figure_naming_the_unsupported_ops():
    fig = flops_treemap(count_flops(nn.ReLU(), (2, 4)))
    assert fig.layout.meta == {"empty": True}
    assert "1 op(s) with no formula counted as 0" in fig.layout.annotations[0].text


def test_module_table_is_the_core_join(tree):
    report = count_flops(TiedLM(), InputSpec((3,), "int64"))
    table = module_table(tree, report)
    assert list(table.columns) == ["module", "depth", "params", "buffers", "bytes", "flops", "macs"]
    assert table.loc[0].to_dict() == {
        "module": "", "depth": 0, "params": 68, "buffers": 9, "bytes": 312, "flops": 336, "macs": 168,
    }  # flops: block.0 2*3*4*4 = 96 + lm_head 2*3*4*10 = 240


@pytest.mark.parametrize("depth", [None, 0, 1, 2, 3])
def test_module_rollup_tree_equals_the_tree_of_every_tensor(tmp_path, depth):
    """A size tree built from the roll-up computed in the scan (StatsDataset.module_rollup) has the figures of the
    tree built from every tensor row, node for node down to its depth: a tied head (TinyGPT), frozen and buffer
    tensors, two state_dicts (model and EMA) in one checkpoint."""
    import torch

    from _fixtures_size import TinyGPT
    from ckptboard.core.dataset import Selection, StatsDataset
    from ckptboard.core.size import size_tree_from_frame
    from ckptboard.core.summarize import summarize
    from ckptboard.dashboard.figures.size import rollup_tree

    torch.manual_seed(0)
    gpt = TinyGPT()
    gpt.wpe.weight.requires_grad_(False)
    (tmp_path / "run").mkdir()
    torch.save(gpt.state_dict(), tmp_path / "run" / "gpt.pt")
    torch.save({"state_dict": gpt.state_dict(), "ema": TinyGPT().state_dict()}, tmp_path / "run" / "ema.pt")
    summarize(tmp_path)
    data = StatsDataset(tmp_path)
    tensors = data.frame("tensors")
    rollup = data.module_rollup(Selection(), depth)
    pairs = tensors[["checkpoint", "group"]].fillna("").drop_duplicates().itertuples(index=False)
    seen = 0
    for checkpoint, group in pairs:
        rows = tensors[(tensors["checkpoint"] == checkpoint) & (tensors["group"].fillna("") == group)]
        want = [n.to_json() for n in size_tree_from_frame(rows).walk(depth)]
        mine = rollup[(rollup["checkpoint"] == checkpoint) & (rollup["group"].fillna("") == group)]
        assert [n.to_json() for n in rollup_tree(mine).walk(depth)] == want, (checkpoint, group)
        seen += 1
    assert seen == 3  # gpt.pt's one state_dict, ema.pt's two
    assert (rollup["counted"] == False).sum() >= 1  # noqa: E712  the tied lm_head is left uncounted


def test_a_module_with_more_children_than_a_chart_draws_keeps_the_largest_and_one_box_for_the_rest():
    from ckptboard.dashboard.figures.size import MAX_CHILDREN

    # 60 Linear(2, 2) layers: 6 float32 elements = 24 bytes each; the first has 2 more outputs: Linear(2, 4) = 48 B
    layers = [nn.Linear(2, 4)] + [nn.Linear(2, 2) for _ in range(59)]
    (trace,) = size_treemap(size_tree(records_of(nn.Sequential(*layers))), max_depth=1).data
    assert MAX_CHILDREN == 50 and len(trace.ids) == 1 + 50 + 1  # the model, 50 layers, one box for the others
    assert trace.ids[:3] == ("(model)", "(10 more)", "0") and trace.ids[-1] == "49"  # the largest, layer 0, kept
    assert trace.values[0] == 48 + 59 * 24 and trace.values[1] == 10 * 24  # the total is unchanged: 1,464 B
    assert sum(trace.values[1:]) == trace.values[0]
