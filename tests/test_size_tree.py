"""The size tree: per-module sums, ties counted once, the sum invariant, and the same tree from cache rows."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from _fixtures_size import TiedLM, TinyGPT, records_of
from ckptboard.core.errors import UsageError
from ckptboard.core.records import TensorKind, Trainable
from ckptboard.core.size import SizeNode, dtype_itemsize, size_tree, size_tree_from_frame


def _figures(node: SizeNode) -> tuple:
    return (node.trainable, node.frozen, node.unknown, node.buffers, node.tied,
            node.parameter_bytes_by_dtype, node.buffer_bytes_by_dtype)


def _sum_of_parts(node: SizeNode) -> tuple:
    """A node's figures recomputed from its own tensors and its children's figures."""
    trainable = frozen = unknown = buffers = tied = 0
    pbytes: dict[str, int] = {}
    bbytes: dict[str, int] = {}
    for t in node.tensors:
        if not t.counted:
            tied += 1
        elif t.kind == TensorKind.BUFFER:
            buffers += t.numel
            bbytes[t.dtype] = bbytes.get(t.dtype, 0) + t.nbytes
        else:
            trainable += t.numel * (t.trainable == Trainable.TRUE)
            frozen += t.numel * (t.trainable == Trainable.FALSE)
            unknown += t.numel * (t.trainable == Trainable.UNKNOWN)
            pbytes[t.dtype] = pbytes.get(t.dtype, 0) + t.nbytes
    for c in node.children:
        trainable, frozen, unknown = trainable + c.trainable, frozen + c.frozen, unknown + c.unknown
        buffers, tied = buffers + c.buffers, tied + c.tied
        for d, b in c.parameter_bytes_by_dtype.items():
            pbytes[d] = pbytes.get(d, 0) + b
        for d, b in c.buffer_bytes_by_dtype.items():
            bbytes[d] = bbytes.get(d, 0) + b
    return trainable, frozen, unknown, buffers, tied, pbytes, bbytes


def test_tied_lm_tree_exact_figures():
    tree = size_tree(records_of(TiedLM()))
    # wte 10*4 = 40 trainable; block.0 Linear(4,4) 16+4 = 20 frozen; block.1 BatchNorm1d(4) 4+4 = 8 trainable;
    # lm_head.weight is wte.weight: listed, tied, not counted.
    assert (tree.trainable, tree.frozen, tree.unknown, tree.parameters) == (48, 20, 0, 68)
    # running_mean 4 + running_var 4 + num_batches_tracked 1
    assert tree.buffers == 9
    # parameters 68*4 = 272 B; buffers 8*4 + 1*8 = 40 B
    assert (tree.parameter_bytes, tree.buffer_bytes, tree.bytes) == (272, 40, 312)
    assert tree.bytes_by_dtype == {"float32": 272 + 32, "int64": 8}
    assert tree.tied == 1
    assert [n.module for n in tree.walk()] == ["", "wte", "block", "block.0", "block.1", "lm_head"]
    head = tree.find("lm_head")
    assert (head.parameters, head.bytes, head.tied) == (0, 0, 1)
    assert head.tensors[0].tied_to == "wte.weight"
    block = tree.find("block")
    # Linear 20*4 = 80 B + BN params 8*4 = 32 B + BN buffers 40 B
    assert (block.trainable, block.frozen, block.buffers, block.bytes) == (8, 20, 9, 152)


@pytest.mark.parametrize("model_fn", [TiedLM, TinyGPT, lambda: nn.LSTM(4, 5, num_layers=2)])
def test_every_node_is_the_sum_of_its_tensors_and_children(model_fn):
    torch.manual_seed(0)
    tree = size_tree(records_of(model_fn()))
    for node in tree.walk():
        assert _figures(node) == _sum_of_parts(node), node.module


@pytest.mark.parametrize("model_fn", [TiedLM, TinyGPT])
def test_root_equals_the_sum_of_the_leaves_and_ties_count_once(model_fn):
    model = model_fn()
    records = records_of(model)
    tree = size_tree(records)
    counted = [r for r in records if r.tied_to is None]
    assert tree.bytes == sum(r.nbytes for r in counted)
    assert tree.parameters + tree.buffers == sum(r.numel for r in counted)
    # The model's own count also counts a shared parameter once.
    assert tree.parameters == sum(p.numel() for p in model.parameters())
    assert tree.tied == len(records) - len(counted) >= 1


def test_size_tree_from_frame_matches_records_with_cache_spellings():
    records = records_of(TiedLM(), group="model")
    df = pd.DataFrame({
        "checkpoint": "a.ckpt",
        "group": [r.group for r in records],
        "name": [r.name for r in records],
        "module": [r.module for r in records],
        "kind": [r.kind for r in records],
        # The cache may store trainable as JSON booleans/None and an untied tensor's tied_to as NaN.
        "trainable": [Trainable(r.trainable).to_json() for r in records],
        "dtype": [r.dtype for r in records],
        "numel": [r.numel for r in records],
        "nbytes": [r.nbytes for r in records],
        "tied_to": [r.tied_to if r.tied_to else math.nan for r in records],
    })
    from_frame = size_tree_from_frame(df)
    from_records = size_tree(records)
    assert [n.to_json() for n in from_frame.walk()] == [n.to_json() for n in from_records.walk()]


def test_ties_to_another_group_count_in_this_one_once():
    records = records_of(TiedLM(), group="ema")
    for r in records:  # as the reader writes them when "ema" holds the same storages as an earlier "model" group
        r.tied_to = f"model/{r.tied_to or r.name}"
    tree = size_tree(records)
    # the same figures as the group that owns the data: lm_head.weight and wte.weight share "model/wte.weight"
    assert (tree.parameters, tree.buffers, tree.bytes, tree.tied) == (68, 9, 312, 1)
    assert tree.find("lm_head").tied == 1 and tree.find("wte").tied == 0


def test_several_groups_are_refused_unless_one_is_picked():
    records = records_of(TiedLM(), group="model") + records_of(TiedLM(), group="ema")
    with pytest.raises(UsageError, match=r"several state_dicts \('ema', 'model'\)"):
        size_tree(records)
    df = pd.DataFrame([vars(r) for r in records])
    with pytest.raises(UsageError, match="several state_dicts"):
        size_tree_from_frame(df)
    assert size_tree_from_frame(df, group="ema").parameters == 68


def test_frame_with_missing_columns_or_several_checkpoints_is_refused():
    df = pd.DataFrame([vars(r) for r in records_of(TiedLM())])
    with pytest.raises(UsageError, match="lacks column.*tied_to"):
        size_tree_from_frame(df.drop(columns=["tied_to"]))
    two = pd.concat([df.assign(checkpoint="a"), df.assign(checkpoint="b")])
    with pytest.raises(UsageError, match="2 checkpoints"):
        size_tree_from_frame(two)


def test_empty_checkpoint_gives_a_root_of_zeros():
    tree = size_tree([])
    assert tree.to_json() == {
        "module": "", "depth": 0, "parameters": 0, "trainable": 0, "frozen": 0, "unknown": 0, "buffers": 0,
        "bytes": 0, "parameter_bytes": 0, "buffer_bytes": 0, "bytes_by_dtype": {}, "tied": 0,
    }
    assert list(tree.walk()) == [tree]


def test_walk_stops_at_depth_and_root_level_tensors_belong_to_the_root():
    tree = size_tree(records_of(TinyGPT()))
    assert {n.depth for n in tree.walk(1)} == {0, 1}
    assert [n.module for n in tree.walk(0)] == [""]
    bare = size_tree(records_of(nn.Linear(3, 2)))  # names "weight", "bias": module ""
    assert (bare.parameters, bare.children) == (3 * 2 + 2, [])


def test_unknown_trainability_and_mixed_dtypes():
    model = nn.Sequential(nn.Linear(4, 4).to(torch.bfloat16), nn.Linear(4, 2))
    tree = size_tree(records_of(model, known_trainable=False))
    # bf16: (16 + 4) * 2 = 40 B; fp32: (8 + 2) * 4 = 40 B
    assert tree.unknown == 30 and tree.trainable == tree.frozen == 0
    assert tree.bytes_by_dtype == {"bfloat16": 40, "float32": 40}


def test_dtype_itemsize():
    assert [dtype_itemsize(d) for d in ("float32", "bfloat16", "int64", "bool", "float8_e4m3fn")] == [4, 2, 8, 1, 1]
    with pytest.raises(UsageError, match="'float33' is not a torch dtype"):
        dtype_itemsize("float33")
