"""Exact rules and optimizer alignment of ``classify_tensors``, on records built from real modules' state_dicts."""

import pytest
import torch
from torch import nn

from _fixtures_zoo import build, group_from_module, optimizer_record, train_one_step
from ckptboard.core.classify import Rule, buffer_rule, classify_tensors, is_floating_dtype
from ckptboard.core.records import OptimizerParam, OptimizerState, TensorGroup, TensorInfo


def _verdicts(group: TensorGroup) -> dict[str, tuple[str, str, str]]:
    return {i.name: (str(i.kind), str(i.trainable), str(i.source)) for i in group.tensors}


def _info(name: str, shape=(4,), dtype="float32") -> TensorInfo:
    numel = 1
    for s in shape:
        numel *= s
    return TensorInfo("", name, name, tuple(shape), dtype, numel, numel * 4)


def test_batchnorm_without_optimizer_names_every_rule():
    group = group_from_module(build("batchnorm2d"))
    classify_tensors([group])
    assert _verdicts(group) == {
        "0.weight": ("parameter", "unknown", "default:float-parameter"),
        "0.bias": ("parameter", "unknown", "default:float-parameter"),
        "1.weight": ("parameter", "unknown", "structure:norm-layer"),
        "1.bias": ("parameter", "unknown", "structure:norm-layer"),
        "1.running_mean": ("buffer", "false", "rule:batchnorm-running-stats"),
        "1.running_var": ("buffer", "false", "rule:batchnorm-running-stats"),
        "1.num_batches_tracked": ("buffer", "false", "rule:num-batches-tracked"),
        "2.weight": ("parameter", "unknown", "default:float-parameter"),
        "2.bias": ("parameter", "unknown", "default:float-parameter"),
    }


def test_spectral_norm_uv_are_buffers_but_weight_norm_v_is_a_parameter():
    sn = group_from_module(build("spectral_norm"))
    wn = group_from_module(build("weight_norm"))
    classify_tensors([sn, wn])
    assert _verdicts(sn)["0.weight_u"][::2] == ("buffer", "rule:spectral-norm-uv")
    assert _verdicts(sn)["0.weight_v"][::2] == ("buffer", "rule:spectral-norm-uv")
    assert _verdicts(sn)["0.weight_orig"][::2] == ("parameter", "default:float-parameter")
    # torch.nn.utils.weight_norm's weight_v sits beside weight_g, not weight_orig: a parameter.
    assert _verdicts(wn)["1.weight_v"][::2] == ("parameter", "default:float-parameter")
    assert _verdicts(wn)["0.parametrizations.weight.original1"][::2] == ("parameter", "default:float-parameter")


def test_spectral_norm_parametrization_uv():
    group = group_from_module(build("spectral_norm_parametrization"))
    classify_tensors([group])
    assert {n: s for n, (k, t, s) in _verdicts(group).items() if k == "buffer"} == {
        "0.parametrizations.weight.0._u": "rule:spectral-norm-uv",
        "0.parametrizations.weight.0._v": "rule:spectral-norm-uv",
        "1.parametrizations.weight.0._u": "rule:spectral-norm-uv",
        "1.parametrizations.weight.0._v": "rule:spectral-norm-uv",
    }


def test_qat_observers_and_fake_quant_are_buffers():
    group = group_from_module(build("qat_conv_bn_relu"))
    classify_tensors([group])
    verdicts = _verdicts(group)
    # 3 fake-quant modules (quant stub, conv weight, conv output) x 7 entries = 21 quant buffers.
    assert sum(s == "rule:quant-observer" for _, _, s in verdicts.values()) == 21
    assert verdicts["conv.weight_fake_quant.scale"] == ("buffer", "false", "rule:quant-observer")
    assert verdicts["conv.weight"] == ("parameter", "unknown", "default:float-parameter")
    assert verdicts["conv.bn.weight"] == ("parameter", "unknown", "structure:norm-layer")


def test_gpt2_style_mask_position_ids_and_rotary():
    group = group_from_module(build("gpt2_style_buffers"))
    classify_tensors([group])
    assert _verdicts(group) == {
        "c_attn.weight": ("parameter", "unknown", "default:float-parameter"),
        "c_attn.bias": ("parameter", "unknown", "default:float-parameter"),
        "bias": ("buffer", "false", "rule:attention-mask"),
        "position_ids": ("buffer", "false", "rule:position-ids"),
        "inv_freq": ("buffer", "false", "rule:rotary-cache"),
    }


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "siblings", "expected"),
    [
        ("blk.running_mean", (4,), "float32", {"running_mean"}, None),  # alone: not a norm layer's statistics
        ("attn.bias", (1, 1, 6, 6), "float32", {"bias"}, Rule.CAUSAL_MASK),  # nanoGPT's float tril mask
        ("attn.bias", (1, 1, 6, 5), "float32", {"bias"}, None),  # not square: no mask
        ("proj.bias", (1, 1, 6, 6), "float32", {"bias"}, None),  # the table keys on the whole suffix attn.bias
        ("final_logits_bias", (1, 50), "float32", {"final_logits_bias"}, Rule.FINAL_LOGITS_BIAS),
        ("final_logits_bias", (50,), "float32", {"final_logits_bias"}, None),  # (1, V) only
        ("bn.weight", (4,), "float32", {"weight", "bias", "running_mean", "running_var"}, Rule.FROZEN_BATCHNORM),
        ("bn.weight", (4,), "float32", {"weight", "running_mean", "running_var", "num_batches_tracked"}, None),
        ("attn.bias", (1, 1, 6, 6), "uint8", {"bias"}, Rule.ATTENTION_MASK),
        ("h.attn.masked_bias", (), "float32", {"masked_bias"}, Rule.ATTENTION_MASK),
        ("emb.position_ids", (1, 8), "float32", {"position_ids"}, None),  # ids are integers
        ("rope.freqs_cis", (8, 4), "complex64", {"freqs_cis"}, Rule.ROTARY_CACHE),
        ("obs.eps", (1,), "float32", {"eps", "min_val", "max_val"}, Rule.QUANT_OBSERVER),
        ("layer.eps", (1,), "float32", {"eps"}, None),  # no observer around it
        ("fc.weight_v", (4, 3), "float32", {"weight_v", "weight_g"}, None),  # weight_norm, not spectral
        ("running_meanx", (4,), "float32", {"running_meanx", "running_var", "running_mean"}, None),  # whole names
    ],
)
def test_buffer_rule_edges(name, shape, dtype, siblings, expected):
    assert buffer_rule(_info(name, shape, dtype), siblings) == expected


def test_non_float_dtypes_are_buffers_and_float_dtypes_are_not():
    assert [is_floating_dtype(d) for d in ("float32", "bfloat16", "float8_e4m3fn", "complex64", "float16")] == [True] * 5
    assert [is_floating_dtype(d) for d in ("int64", "bool", "uint8", "qint8", "int32")] == [False] * 5
    group = TensorGroup("", [_info("table", (3,), "int32"), _info("flags", (3,), "bool")])
    classify_tensors([group])
    assert {i.source for i in group.tensors} == {Rule.NON_FLOAT}


def test_frozen_parameters_not_held_by_the_optimizer_are_frozen():
    model = build("frozen_backbone")
    opt = train_one_step(model, lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad]))
    group = group_from_module(model)
    classify_tensors([group], [optimizer_record(opt.state_dict())])
    verdicts = _verdicts(group)
    assert verdicts["backbone.0.weight"] == ("parameter", "false", "optimizer:not-held")
    assert verdicts["backbone.1.weight"] == ("parameter", "false", "optimizer:not-held")
    assert verdicts["head.weight"] == ("parameter", "true", "optimizer:held")
    assert verdicts["backbone.1.running_var"] == ("buffer", "false", "rule:batchnorm-running-stats")


def test_frozen_parameters_held_without_state_are_frozen():
    model = build("frozen_backbone")
    opt = train_one_step(model, lambda m: torch.optim.AdamW(m.parameters()))
    group = group_from_module(model)
    classify_tensors([group], [optimizer_record(opt.state_dict())])
    assert _verdicts(group)["backbone.3.bias"] == ("parameter", "false", "optimizer:held-without-state")
    assert _verdicts(group)["head.bias"] == ("parameter", "true", "optimizer:held")


def test_sgd_without_momentum_aligns_by_count_only():
    # Every parameter held (count 6 == 6 float entries): certain. Frozen backbone: 2 of 6 held, order unknown.
    model = build("batchnorm1d")
    opt = train_one_step(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    group = group_from_module(model)
    classify_tensors([group], [optimizer_record(opt.state_dict())])
    assert {v for v in _verdicts(group).values() if v[0] == "parameter"} == {("parameter", "true", "optimizer:held")}

    model = build("frozen_backbone")
    opt = train_one_step(model, lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1))
    group = group_from_module(model)
    result = classify_tensors([group], [optimizer_record(opt.state_dict())])
    assert _verdicts(group)["head.bias"] == ("parameter", "unknown", "optimizer:ambiguous")
    # Float entries: backbone 0.w 0.b 1.w 1.b 3.w 3.b, head w b = 8; 2 slots anywhere among them: all 8 ambiguous.
    assert result.notes == [
        "group '': 8 entries may or may not be held by the optimizer (equal shapes in a row or no parameter-shaped "
        "state); their trainable is unknown"
    ]


def test_equal_shapes_in_a_row_are_ambiguous_only_where_the_order_allows():
    # Three Linear(4, 4) in a row, only the last trainable: which one is held cannot be told from shapes alone.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(4, 2), nn.Linear(2, 4))
    model[1].requires_grad_(False)
    model[2].requires_grad_(False)
    opt = train_one_step(model, lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad]))
    group = group_from_module(model)
    classify_tensors([group], [optimizer_record(opt.state_dict())])
    assert {n: v[2] for n, v in _verdicts(group).items()} == {
        "0.weight": "optimizer:ambiguous",  # held: 0.weight or 1.weight (both [4, 4])
        "1.weight": "optimizer:ambiguous",
        "2.weight": "optimizer:not-held",  # [2, 4]: no slot of that shape
        "2.bias": "optimizer:not-held",
        "3.weight": "optimizer:held",
        "3.bias": "optimizer:held",
    }


def test_interleaved_param_groups_line_up_group_by_group():
    model = build("transformer_encoder")
    opt = train_one_step(model, lambda m: torch.optim.AdamW([
        {"params": [p for p in m.parameters() if p.dim() >= 2], "weight_decay": 0.01},
        {"params": [p for p in m.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]))
    group = group_from_module(model)
    result = classify_tensors([group], [optimizer_record(opt.state_dict())])
    assert {v for v in _verdicts(group).values()} == {("parameter", "true", "optimizer:held")}
    assert result.notes == []


def test_optimizer_that_does_not_line_up_is_ignored_with_a_note():
    group = group_from_module(build("embedding"))
    foreign = OptimizerState("optimizer", [OptimizerParam(0, 0, {"exp_avg": (7, 7)})])
    result = classify_tensors([group], [foreign])
    assert {i.source for i in group.tensors} == {Rule.FLOAT_PARAMETER}
    assert result.notes == [
        "optimizer 'optimizer' (1 parameters) does not line up with the floating-point entries of any group "
        "(shapes or order differ); trainable left unknown"
    ]


def test_optimizer_goes_to_the_model_group_not_the_ema_copy():
    model = build("batchnorm1d")
    opt = train_one_step(model, lambda m: torch.optim.Adam(m.parameters()))
    main, ema = group_from_module(model, "model"), group_from_module(model, "ema")
    ema.tensors.pop(0)  # the EMA group differs: one entry fewer, so the optimizer covers only "model" exactly
    result = classify_tensors([ema, main], [optimizer_record(opt.state_dict())])
    assert main.tensors[0].source == Rule.OPTIMIZER_HELD
    assert {i.source for i in ema.tensors if i.kind == "parameter"} <= {Rule.FLOAT_PARAMETER, Rule.NORM_LAYER}
    assert result.notes == []


def test_two_optimizers_over_one_group_gan_style():
    torch.manual_seed(0)
    gan = nn.ModuleDict({"generator": nn.Linear(3, 5), "discriminator": nn.Linear(5, 1)})
    opt_g = train_one_step(gan, lambda m: torch.optim.Adam(m["generator"].parameters()))
    opt_d = train_one_step(gan, lambda m: torch.optim.Adam(m["discriminator"].parameters()))
    group = group_from_module(gan)
    classify_tensors([group], [optimizer_record(opt_g.state_dict(), "optimizer_states/0"),
                               optimizer_record(opt_d.state_dict(), "optimizer_states/1")])
    assert {i.source for i in group.tensors} == {Rule.OPTIMIZER_HELD}


def test_tied_weight_takes_the_verdict_of_its_target():
    model = build("tied_embedding")
    opt = train_one_step(model, lambda m: torch.optim.Adam(m.parameters()))
    group = group_from_module(model)
    assert group.tensors[-1].tied_to == "embed.weight"
    classify_tensors([group], [optimizer_record(opt.state_dict())])
    assert _verdicts(group)["lm_head.weight"] == ("parameter", "true", "optimizer:held")
