"""Counted FLOPs: exact figures for known layers, agreement with FlopCounterMode, the CPU fallback, unsupported ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from _fixtures_size import Attention, NeedsItem, NeedsNumpy, TiedLM, TinyGPT, records_of
from ckptboard.core.errors import FlopCountError, UsageError
from ckptboard.core.flops import InputSpec, count_flops, module_table, parse_input_specs
from ckptboard.core.size import size_tree


def _ops(report) -> dict[str, tuple[str, int, list[str]]]:
    return {op.op: (op.category, op.calls, op.modules) for op in report.unsupported_ops}


def _flops(report) -> dict[str, int]:
    return {m.module: m.flops for m in report.modules}


def test_linear():
    report = count_flops(nn.Linear(8, 16), (4, 8))
    # addmm: 2 * batch 4 * in 8 * out 16 = 1024 (the bias add is not counted, as in FlopCounterMode)
    assert report.total_flops == 1024 and report.total_macs == 512
    assert report.device == "meta" and report.notes == []
    assert report.modules[0].by_op == {"aten.addmm": 1024}
    assert report.unsupported_ops == []


def test_conv2d_with_groups_and_stride():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, groups=2), nn.ReLU())
    report = count_flops(model, (1, 4, 9, 9))
    # output (9 - 3) // 2 + 1 = 4 → 4*4 = 16 positions; 2 * (C_in/groups = 2) * 3*3 * C_out 8 * 16 = 4608
    assert _flops(report) == {"": 4608, "0": 4608, "1": 0}
    assert _ops(report) == {"aten.relu": ("pointwise", 1, ["1"])}


def test_batchnorm_counts_zero_and_is_listed():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    report = count_flops(model, (2, 3, 5, 5))
    # conv 1x1: 2 * 3 * 1 * 4 per position * 2*5*5 positions = 1200; BatchNorm has no formula: 0, and listed
    assert _flops(report) == {"": 1200, "0": 1200, "1": 0}
    assert _ops(report) == {"aten._native_batch_norm_legit_no_training": ("other", 1, ["1"])}


def test_scaled_dot_product_attention_on_meta_and_on_cpu():
    q = InputSpec((1, 2, 8, 16))
    # QK^T: 2 * b 1 * h 2 * s_q 8 * s_k 8 * d 16 = 4096; scores @ V: the same 4096 → 8192
    on_meta = count_flops(Attention(), [q, q, q])
    assert on_meta.total_flops == 8192
    assert on_meta.modules[0].by_op == {"aten.bmm": 8192}  # meta runs the math path: two bmm
    assert _ops(on_meta)["aten._safe_softmax"][0] == "other"
    # CPU picks its flash kernel, which FlopCounterMode has no formula for; we give it the SDPA one.
    on_cpu = count_flops(Attention(), [q, q, q], meta_first=False)
    assert on_cpu.device == "cpu" and on_cpu.total_flops == 8192
    assert on_cpu.modules[0].by_op == {"aten._scaled_dot_product_flash_attention_for_cpu": 8192}
    assert on_cpu.unsupported_ops == []


def test_lstm_on_meta_and_on_cpu():
    model = nn.LSTM(4, 5)
    # per step: x W_ih^T 2*batch 2*in 4*4H 20 = 320, h W_hh^T 2*2*5*20 = 400 → 720; 7 steps → 5040
    on_meta = count_flops(model, (7, 2, 4))
    on_cpu = count_flops(model, (7, 2, 4), meta_first=False)
    assert on_meta.total_flops == on_cpu.total_flops == 5040
    # The gate nonlinearities are pointwise ops with no formula: listed, never silently zero.
    assert {"aten.sigmoid_", "aten.tanh"} <= set(_ops(on_meta))
    # Run plainly on CPU, FlopCounterMode sees one fused mkldnn kernel and counts 0; count_flops unfuses it.
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        model(torch.randn(7, 2, 4))
    assert plain.get_total_flops() == 0


def test_transformer_encoder_meta_and_cpu_fast_path_agree():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    # per layer, T=5: in_proj 2*5*16*48 = 7680 + out_proj 2*5*16*16 = 2560; attention 2 * (2*2*5*5*8) = 1600;
    # linear1 2*5*16*32 = 5120, linear2 5120 → 22080; two layers → 44160
    on_meta = count_flops(model, (1, 5, 16))
    on_cpu = count_flops(model, (1, 5, 16), meta_first=False)
    assert on_meta.total_flops == on_cpu.total_flops == 44160
    assert _flops(on_meta)["layers.0.self_attn"] == 7680 + 2560 + 1600
    assert _flops(on_meta)["layers"] == 44160  # a ModuleList is never called: the sum of its children
    assert "aten.native_layer_norm" in _ops(on_meta)
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_tiny_gpt_with_token_ids():
    inputs = parse_input_specs(["1,8"], ["int64"])
    report = count_flops(TinyGPT(), inputs)
    # per block, T=8, d=16: qkv 2*8*16*48 = 12288; attention 2 * (2*2*8*8*8) = 4096; proj 2*8*16*16 = 4096;
    # mlp 2*8*16*64 * 2 = 32768 → 53248; two blocks 106496; lm_head 2*8*16*32 = 8192; embeddings 0 → 114688
    assert report.total_flops == 114688
    flops = _flops(report)
    assert flops["blocks.0"] == flops["blocks.1"] == 53248
    assert flops["blocks"] == 106496 and flops["wte"] == 0 and flops["lm_head"] == 8192
    assert "aten.embedding" not in _ops(report)  # a lookup: data movement, not listed
    assert report.to_json()["inputs"] == [{"shape": [1, 8], "dtype": "int64"}]


@pytest.mark.parametrize(("model_fn", "shape"), [
    (TinyGPT, None),
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                           nn.Linear(8 * 6 * 6, 5)), (2, 3, 6, 6)),
])
def test_agrees_with_flop_counter_mode_run_directly(model_fn, shape):
    torch.manual_seed(0)
    model = model_fn().eval()
    x = torch.zeros(1, 8, dtype=torch.long) if shape is None else torch.randn(shape)
    with torch.device("meta"):
        meta_model = model_fn().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as direct:
        meta_model(x.to("meta"))
    spec = InputSpec(tuple(x.shape), str(x.dtype).removeprefix("torch."))
    report = count_flops(model, [spec])
    assert report.total_flops == direct.get_total_flops() > 0
    root = type(model).__name__
    expected = {k.removeprefix(root).lstrip("."): sum(v.values()) for k, v in direct.get_flop_counts().items()}
    expected.pop("Global")
    assert {m.module: m.flops for m in report.modules if m.module in expected} == expected


@pytest.mark.parametrize(("model", "shape", "expected"), [
    (NeedsItem(), (2, 4), 2 * 2 * 4 * 3),  # Linear(4, 3) on 2 rows: 48
    (NeedsNumpy(), (3, 4), 2 * 3 * 4 * 2),  # Linear(4, 2) on 3 rows: 48
])
def test_a_model_failing_on_meta_falls_back_to_cpu_and_says_so(model, shape, expected):
    weight = model.fc.weight.detach().clone()
    report = count_flops(model, shape)
    assert report.device == "cpu"
    assert report.total_flops == expected and report.find("fc").flops == expected
    assert len(report.notes) == 1 and "does not run on the meta device" in report.notes[0]
    assert report.notes[0].endswith("counted on cpu instead")
    assert torch.equal(model.fc.weight, weight) and model.training  # weights untouched, train mode restored


def test_a_meta_built_model_needs_a_cpu_builder_to_fall_back():
    with torch.device("meta"):
        model = NeedsItem()
    with pytest.raises(FlopCountError, match=r"NeedsItem fails on the meta device with input \(2,4\) float32"):
        count_flops(model, (2, 4))
    report = count_flops(model, (2, 4), build_cpu_model=NeedsItem)
    assert (report.device, report.total_flops) == ("cpu", 48)


def test_wrong_input_shape_names_the_shape():
    with pytest.raises(FlopCountError, match=r"Linear failed on input \(2,5\) float32: RuntimeError: .*mat1"):
        count_flops(nn.Linear(4, 3), (2, 5))


@pytest.mark.parametrize(("shapes", "dtypes", "message"), [
    ([], [], "give the model's input shape"),
    (["1,a"], [], "'1,a': expected positive sizes"),
    (["1,x"], [], "'1,x': expected positive sizes"),
    (["1,,3"], [], "'1,,3': expected positive sizes"),
    (["1,0"], [], "'1,0': expected positive sizes"),
    (["1,8", "1,8"], ["int64"], "2 --input-shape but 1 --input-dtype"),
    (["1,8"], ["float33"], "'float33': not a torch dtype"),
])
def test_bad_input_specs(shapes, dtypes, message):
    with pytest.raises(UsageError, match=message):
        parse_input_specs(shapes, dtypes)


def test_input_specs_parse_and_make():
    a, b = parse_input_specs(["(1, 3, 4)", "2x5"], ["torch.bfloat16", "int64"])
    assert (a, b) == (InputSpec((1, 3, 4), "bfloat16"), InputSpec((2, 5), "int64"))
    assert b.make("cpu").dtype == torch.int64 and not b.make("cpu").any()  # zeros: valid ids for any vocab
    assert a.make("meta").is_meta


def test_several_inputs():
    q, k = InputSpec((1, 2, 4, 8)), InputSpec((1, 2, 6, 8))
    # QK^T 2*1*2*4*6*8 = 768; scores @ V (V: 6x8) 768 → 1536
    assert count_flops(Attention(), [q, k, k]).total_flops == 1536


def test_module_table_joins_sizes_and_flops():
    model = TiedLM()
    report = count_flops(model, InputSpec((3,), "int64"))
    table = module_table(size_tree(records_of(model)), report)
    assert list(table.columns) == ["module", "depth", "params", "buffers", "bytes", "flops", "macs"]
    rows = table.set_index("module")
    # block.0 Linear(4,4) on 3 rows: 2*3*4*4 = 96; lm_head 2*3*4*10 = 240
    assert rows.loc["", "flops"] == 96 + 240 and rows.loc["", "params"] == 68
    assert rows.loc["lm_head", "params"] == 0 and rows.loc["lm_head", "flops"] == 240
    assert rows.loc["block.1", "buffers"] == 9
    assert table["params"].isna().sum() == 0
    only_sizes = module_table(size_tree(records_of(model)))
    assert only_sizes["flops"].isna().all() and list(only_sizes["module"])[:2] == ["", "wte"]
    only_flops = module_table(None, report, max_depth=1)
    assert only_flops["params"].isna().all() and set(only_flops["depth"]) == {0, 1}


def test_report_json_contract():
    data = count_flops(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), (1, 4)).to_json()
    assert list(data)[:4] == ["total_flops", "unit", "modules", "unsupported_ops"]
    assert data["total_flops"] == 32 and data["unit"] == "FLOP" and data["macs"] == 16  # 2*1*4*4
    assert data["modules"][0] == {"module": "", "flops": 32, "macs": 16, "depth": 0, "by_op": {"aten.addmm": 32}}
    assert data["unsupported_ops"] == [{"op": "aten.relu", "category": "pointwise", "calls": 1, "modules": ["1"]}]
    assert data["device"] == "meta" and data["model"] == "Sequential"
