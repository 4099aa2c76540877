"""Classification with the model, and the model report (missing/unexpected keys, shapes, non-persistent buffers,
plain tensor attributes, other groups, requires_grad vs optimizer)."""

import pytest
import torch
from torch import nn

from _fixtures_zoo import build, group_from_module, optimizer_record, train_one_step
from ckptboard.core.classify import Rule, classify_tensors
from ckptboard.core.errors import ModelSpecError
from ckptboard.core.model_report import ModelReport, ShapeMismatch


def _on_meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return build(name)


def test_model_decides_and_reports_nothing_wrong_for_its_own_state_dict():
    group = group_from_module(build("batchnorm2d"), "state_dict")
    result = classify_tensors([group], [], _on_meta("batchnorm2d"))
    assert {i.source for i in group.tensors} == {Rule.MODEL_PARAMETER, Rule.MODEL_BUFFER}
    assert result.report == ModelReport(group="state_dict", matched=9)
    assert result.notes == []


def test_custom_float_buffer_right_with_the_model():
    model = _on_meta("non_persistent_and_custom_buffer")
    group = group_from_module(build("non_persistent_and_custom_buffer"))
    report = classify_tensors([group], [], model).report
    by_name = {i.name: (i.kind, i.trainable, i.source) for i in group.tensors}
    assert by_name["class_weights"] == ("buffer", "false", "model:named_buffers")
    assert report.non_persistent_buffers == ["scratch"]
    assert report.plain_tensor_attributes == ["lookup"]
    assert report.missing_keys == []


def test_lightning_prefix_missing_unexpected_and_shape_mismatch():
    saved = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 5))  # head 5 wide on disk
    group = group_from_module(saved, "state_dict", prefix="model.")
    del group.tensors[1]  # 0.bias lost
    group.tensors.extend(group_from_module(nn.Linear(2, 2), "state_dict", prefix="loss_fn.").tensors)
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    report = classify_tensors([group], [], model).report
    assert report.checkpoint_prefix == "model."
    assert report.matched == 8  # 9 entries of the model - 0.bias
    assert report.missing_keys == ["0.bias"]
    assert report.unexpected_keys == ["loss_fn.bias", "loss_fn.weight"]
    assert report.shape_mismatches == [ShapeMismatch("2.bias", (5,), (2,)), ShapeMismatch("2.weight", (5, 4), (2, 4))]
    loss_fn = [i for i in group.tensors if i.name.startswith("loss_fn.")]
    assert {i.source for i in loss_fn} == {Rule.FLOAT_PARAMETER}  # not the model's: the rules decide
    assert report.to_json()["shape_mismatches"][0] == {"name": "2.bias", "checkpoint_shape": [5], "model_shape": [2]}


def test_model_wrapping_the_saved_network_adds_its_prefix():
    saved = nn.Linear(3, 4)
    with torch.device("meta"):
        wrapper = nn.ModuleDict({"net": nn.Linear(3, 4)})
    group = group_from_module(saved)
    report = classify_tensors([group], [], wrapper).report
    assert (report.model_prefix, report.matched, report.missing_keys) == ("net.", 2, [])


def test_ema_group_classified_by_the_model_where_shapes_agree():
    model = build("batchnorm1d")
    main, ema = group_from_module(model, "model"), group_from_module(model, "ema")
    ema.tensors.append(group_from_module(nn.Linear(2, 2), "ema", prefix="extra.").tensors[0])
    report = classify_tensors([main, ema], [], _on_meta("batchnorm1d")).report
    assert report.group == "model" and report.other_groups == ["ema"]
    assert [i.source for i in ema.tensors][-2:] == [Rule.MODEL_PARAMETER, Rule.FLOAT_PARAMETER]


def test_requires_grad_disagreeing_with_the_optimizer_is_reported():
    # Frozen in the training script, not in the model's constructor: the fresh model says trainable.
    trained = build("batchnorm1d")
    trained[0].requires_grad_(False)
    opt = train_one_step(trained, lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad]))
    group = group_from_module(trained)
    report = classify_tensors([group], [optimizer_record(opt.state_dict())], _on_meta("batchnorm1d")).report
    # 0.bias [4] is ambiguous, not "not held": the slots [4], [4] of BN weight/bias could sit on 0.bias too.
    assert report.trainable_disagreements == ["0.weight: requires_grad=True but optimizer:not-held"]
    assert group.tensors[0].trainable == "true"  # the model is authoritative


def test_spectral_norm_plain_weight_attribute_is_flagged():
    report = classify_tensors([group_from_module(build("spectral_norm"))], [], build("spectral_norm")).report
    # torch.nn.utils.spectral_norm recomputes ``weight`` as a plain attribute on every forward.
    assert report.plain_tensor_attributes == ["0.weight", "1.weight"]


def test_tied_weights_are_parameters_under_both_names():
    group = group_from_module(build("tied_embedding"))
    report = classify_tensors([group], [], _on_meta("tied_embedding")).report
    assert [i.source for i in group.tensors] == [Rule.MODEL_PARAMETER] * 4
    assert report.missing_keys == [] and report.matched == 4


def test_no_groups_reports_everything_missing():
    report = classify_tensors([], [], _on_meta("embedding")).report
    assert (report.group, report.matched, report.missing_keys) == ("", 0, ["0.weight", "1.bias", "1.weight"])


def test_unrelated_model_matches_nothing_and_says_so():
    group = group_from_module(build("embedding"))
    result = classify_tensors([group], [], _on_meta("lstm_gru"))
    assert result.report.matched == 0 and len(result.report.unexpected_keys) == 3
    assert result.notes == [
        "the model matched none of the checkpoint's names (12 model keys); is --model the network this checkpoint "
        "was saved from?"
    ]


def test_model_whose_state_dict_fails_is_a_model_spec_error():
    class Broken(nn.Linear):
        def state_dict(self, *args, **kwargs):
            raise RuntimeError("custom hook failed")

    with pytest.raises(ModelSpecError, match=r"state_dict\(\)/named_parameters\(\) raised RuntimeError: custom hook"):
        classify_tensors([group_from_module(nn.Linear(2, 2))], [], Broken(2, 2))
