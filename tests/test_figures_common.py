"""Step decimation, tensor selection and formatting helpers shared by the figure builders."""

import numpy as np
import pandas as pd
import pytest

from ckptboard.core.errors import UsageError
from ckptboard.dashboard.figures._common import (
    decimate_steps,
    format_shape,
    module_group,
    select_tensors,
    step_ramp,
    tensor_label,
)
from _fixtures_tables import synthetic_tables


def test_decimate_keeps_all_when_few():
    assert decimate_steps([30, 10, 20, 10], max_points=5).tolist() == [10, 20, 30]


def test_decimate_keeps_first_and_last_and_bound():
    steps = np.arange(1000) * 7
    kept = decimate_steps(steps, max_points=50)
    assert len(kept) == 50
    assert kept[0] == 0 and kept[-1] == 999 * 7
    # evenly spread: gaps are 999/49 ≈ 20.4 indices, i.e. 20 or 21 steps of 7
    assert set(np.diff(kept) // 7) <= {20, 21}


def test_decimate_ignores_nan_and_rejects_tiny_budget():
    assert decimate_steps([1.0, float("nan"), 3.0], 10).tolist() == [1.0, 3.0]
    with pytest.raises(UsageError, match="max_points must be at least 2"):
        decimate_steps([1, 2, 3], 1)


def test_select_tensors_filters():
    tables = synthetic_tables(n_checkpoints=2, n_tensors=16, runs=1)
    # 16 tensors = 12 of two conv/BN blocks + embed.weight, temperature, fc.weight, fc.bias; run0 and single
    rows = select_tensors(tables, run="run0", pattern=r"^fc\.", kinds=["parameter"])
    assert sorted(set(rows["name"])) == ["fc.bias", "fc.weight"]
    assert len(rows) == 4  # 2 tensors x 2 checkpoints
    bn = select_tensors(tables, run="run0", module="block1", kinds=["buffer"], checkpoint="run0/ckpt_00001.pt")
    assert sorted(bn["name"]) == [
        "block1.bn.num_batches_tracked", "block1.bn.running_mean", "block1.bn.running_var"]


def test_select_tensors_depth_and_bad_regex():
    tables = synthetic_tables(n_checkpoints=1, n_tensors=16, runs=1)
    rows = select_tensors(tables, run="run0", depth=1)
    assert set(rows["module_group"]) == {"block0", "block1", "embed", "fc", ""}
    with pytest.raises(UsageError, match=r"'\[' is not a valid regular expression"):
        select_tensors(tables, pattern="[")


def test_module_group_depths():
    s = pd.Series(["a.b.c", "a", "", None])
    assert module_group(s, 2).tolist() == ["a.b", "a", "", ""]
    assert module_group(s, 0).tolist() == ["", "", "", ""]


def test_labels_and_formatting():
    assert tensor_label("", "fc.weight") == "fc.weight"
    assert tensor_label("ema", "fc.weight") == "ema:fc.weight"
    assert format_shape("[64, 3, 3, 3]") == "[64, 3, 3, 3]"
    assert format_shape((2, 5)) == "[2, 5]"
    assert format_shape("[]") == "[]"
    assert len(step_ramp(5)) == 5 and step_ramp(0) == []


def test_short_labels_stay_distinct_and_fit():
    from ckptboard.dashboard.figures._common import short_labels

    hf = [f"resnet.encoder.stages.{a}.layers.{b}.layer.{c}.normalization" for a in (0, 1) for b in (0, 1)
          for c in (0, 1)]  # fmt: skip
    # the shared "resnet.encoder.stages." goes: "…0.layers.0.layer.0.normalization" is 33 characters
    assert short_labels(hf, 38)[0] == "…0.layers.0.layer.0.normalization"
    llama = [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(3)] + ["lm_head.weight"]
    # no shared prefix; "model" then "layers" then "self_attn" shrink until 27 <= 30 characters
    assert short_labels(llama, 30) == ["mod.lay.0.sel.q_proj.weight", "mod.lay.1.sel.q_proj.weight",
                                       "mod.lay.2.sel.q_proj.weight", "lm_head.weight"]  # fmt: skip
    assert short_labels(["a.b", "c"], 40) == ["a.b", "c"]  # short labels untouched
    same = ["x" * 50 + "1", "x" * 50 + "2"]
    assert len(set(short_labels(same, 20))) == 2  # cut alike: kept apart (in full if need be)
