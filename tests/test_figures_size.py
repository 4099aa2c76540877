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
