"""The notebook API cannot mislead: Trainable has no truth value, classify returns what it decided."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ckptboard.core.classify import Classification, Rule, Verdict, classify
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import Trainable


@pytest.mark.parametrize("value", list(Trainable))
def test_trainable_refuses_truthiness(value):
    with pytest.raises(TypeError, match="compare with Trainable.TRUE, or use TensorInfo.is_trainable"):
        bool(value)


def test_classify_returns_verdicts_and_is_trainable_is_a_real_bool(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model[0].requires_grad_(False)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with open_checkpoint(tmp_path / "m.pt") as ckpt:
        result = classify(ckpt, model)
        infos = {i.name: i for i in ckpt.tensors}
    assert isinstance(result, Classification) and result.model_source == "--model"
    assert result.verdicts[0] == Verdict("", "0.weight", "parameter", "false", Rule.MODEL_PARAMETER)
    # Linear weight, bias (frozen) + BatchNorm weight, bias (trainable) + running_mean, running_var,
    # num_batches_tracked (buffers).
    assert result.counts() == {"buffer": 3, "trainable": 2, "frozen": 2, "unknown": 0}
    assert [n for n, i in infos.items() if i.is_trainable] == ["1.weight", "1.bias"]
    assert infos["0.weight"].is_trainable is False and result.verdicts[0].is_trainable is False


def test_is_trainable_is_none_when_unknown_and_works_on_plain_strings(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "m.pt")
    with open_checkpoint(tmp_path / "m.pt") as ckpt:
        classify(ckpt)
        [info] = ckpt.tensors
    assert info.is_trainable is None
    info.trainable = "false"  # as read back from a table
    assert info.is_trainable is False
