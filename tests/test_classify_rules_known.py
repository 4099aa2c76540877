"""Heuristic rules for frozen BatchNorm, known architecture buffers and quantized layouts, on real modules and on
state_dicts with the tensor names each quantization library documents and writes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from _fixtures_zoo import group_from_module
from ckptboard.core.classify import Rule, classify, classify_tensors
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import TensorKind, Trainable


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d's registration: four buffers, no num_batches_tracked."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))


class _Backbone(nn.Module):
    """A detection backbone stem: conv + frozen BN, beside a trainable conv + ordinary BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = FrozenBatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(4)


def _by_name(group) -> dict[str, tuple[str, str, str]]:
    return {i.name: (str(i.kind), str(i.trainable), str(i.source)) for i in group.tensors}


def test_frozen_batchnorm_weight_and_bias_are_buffers_and_real_batchnorm_stays_a_parameter():
    model = _Backbone()
    group = group_from_module(model, "model")
    classify_tensors([group])
    got = _by_name(group)
    truth = {n: "buffer" for n, _ in model.named_buffers()} | {n: "parameter" for n, _ in model.named_parameters()}
    assert {n: k for n, (k, _, _) in got.items()} == truth
    assert got["bn1.weight"] == ("buffer", "false", Rule.FROZEN_BATCHNORM)
    assert got["bn1.bias"] == ("buffer", "false", Rule.FROZEN_BATCHNORM)
    assert got["bn2.weight"] == ("parameter", "unknown", Rule.NORM_LAYER)


class _NanoGPTAttention(nn.Module):
    """nanoGPT model.py CausalSelfAttention without flash attention: a float tril mask registered as ``bias``."""

    def __init__(self, d: int = 8, block_size: int = 6):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))


def test_nanogpt_float_causal_mask_is_a_buffer():
    model = nn.ModuleDict({"attn": _NanoGPTAttention()})
    group = group_from_module(model, "model")
    classify_tensors([group])
    got = _by_name(group)
    assert got["attn.bias"] == ("buffer", "false", Rule.CAUSAL_MASK)
    assert got["attn.c_attn.bias"] == ("parameter", "unknown", Rule.FLOAT_PARAMETER)  # 1-D: a Linear's bias


def _classify_file(path) -> dict[str, tuple[str, str, str]]:
    with open_checkpoint(path) as ckpt:
        classify(ckpt, from_config=False)
        return {i.name: (str(i.kind), str(i.trainable), str(i.source)) for i in ckpt.tensors}


FROZEN = (TensorKind.PARAMETER.value, Trainable.FALSE.value)
BUFFER = (TensorKind.BUFFER.value, Trainable.FALSE.value)


def test_gptq_and_awq_packed_weights_are_frozen_and_g_idx_is_a_buffer(tmp_path):
    # AutoGPTQ nn_modules/qlinear QuantLinear(bits=4, group_size=32, infeatures=64, outfeatures=32) registers
    # qweight (64 // 32 * 4, 32) int32, qzeros (64 // 32, 32 // 32 * 4) int32, scales (2, 32) fp16, g_idx (64,) int32,
    # bias (32,) fp16. AutoAWQ WQLinear_GEMM has the same names without g_idx.
    sd = {
        "model.layers.0.mlp.up_proj.qweight": torch.zeros(8, 32, dtype=torch.int32),
        "model.layers.0.mlp.up_proj.qzeros": torch.zeros(2, 4, dtype=torch.int32),
        "model.layers.0.mlp.up_proj.scales": torch.ones(2, 32, dtype=torch.float16),
        "model.layers.0.mlp.up_proj.g_idx": torch.arange(64, dtype=torch.int32) // 32,
        "model.layers.0.mlp.up_proj.bias": torch.zeros(32, dtype=torch.float16),
        "model.norm.weight": torch.ones(64, dtype=torch.float16),
    }
    save_file(sd, tmp_path / "model.safetensors")
    got = _classify_file(tmp_path / "model.safetensors")
    for leaf in ("qweight", "qzeros", "scales", "bias"):
        assert got[f"model.layers.0.mlp.up_proj.{leaf}"] == (*FROZEN, Rule.GPTQ_AWQ)
    assert got["model.layers.0.mlp.up_proj.g_idx"] == (*BUFFER, Rule.GPTQ_AWQ)
    assert got["model.norm.weight"] == ("parameter", "unknown", Rule.FLOAT_PARAMETER)


def test_bitsandbytes_int8_weight_and_scb_are_frozen_not_a_buffer_and_a_parameter(tmp_path):
    # bitsandbytes nn.Linear8bitLt._save_to_state_dict: int8 ``weight`` (out, in), ``SCB`` (out,) float32 row scales,
    # and (bitsandbytes < 0.43) a uint8 ``weight_format`` flag.
    sd = {
        "fc.weight": torch.zeros(4, 8, dtype=torch.int8),
        "fc.SCB": torch.ones(4),
        "fc.weight_format": torch.zeros((), dtype=torch.uint8),
        "fc.bias": torch.zeros(4),
    }
    save_file(sd, tmp_path / "m.safetensors")
    got = _classify_file(tmp_path / "m.safetensors")
    assert got["fc.weight"] == (*FROZEN, Rule.BNB_INT8)
    assert got["fc.SCB"] == (*FROZEN, Rule.BNB_INT8)
    assert got["fc.weight_format"] == (*BUFFER, Rule.BNB_INT8)
    assert got["fc.bias"] == ("parameter", "unknown", Rule.FLOAT_PARAMETER)


def test_bitsandbytes_4bit_weight_and_quant_state(tmp_path):
    # bitsandbytes Params4bit: packed uint8 ``weight`` (in*out/2, 1), and QuantState.as_dict(packed=True) saved
    # under ``weight.``: absmax, quant_map, nested_absmax, nested_quant_map, quant_state.bitsandbytes__nf4.
    sd = {
        "q_proj.weight": torch.zeros(16, 1, dtype=torch.uint8),
        "q_proj.weight.absmax": torch.zeros(1, dtype=torch.uint8),
        "q_proj.weight.quant_map": torch.zeros(16),
        "q_proj.weight.nested_absmax": torch.ones(1),
        "q_proj.weight.nested_quant_map": torch.zeros(256),
        "q_proj.weight.quant_state.bitsandbytes__nf4": torch.zeros(40, dtype=torch.uint8),
        "q_proj.bias": torch.zeros(4),
    }
    save_file(sd, tmp_path / "m.safetensors")
    got = _classify_file(tmp_path / "m.safetensors")
    for name in ("q_proj.weight", "q_proj.weight.absmax", "q_proj.weight.quant_map", "q_proj.weight.nested_absmax",
                 "q_proj.weight.nested_quant_map"):
        assert got[name] == (*FROZEN, Rule.BNB_4BIT), name
    assert got["q_proj.weight.quant_state.bitsandbytes__nf4"] == (*BUFFER, Rule.BNB_4BIT)
    assert got["q_proj.bias"] == ("parameter", "unknown", Rule.FLOAT_PARAMETER)


@pytest.mark.parametrize("scale", ["weight_scale", "weight_scale_inv"])
def test_fp8_weight_with_scale_is_frozen_and_activation_scale_a_buffer(tmp_path, scale):
    # compressed-tensors / FBGEMM fp8: float8 ``weight`` with ``weight_scale`` (per channel) and a static
    # ``input_scale``; finegrained fp8 (DeepSeek-V3) names the block scale ``weight_scale_inv``.
    sd = {
        "o_proj.weight": torch.zeros(4, 8).to(torch.float8_e4m3fn),
        f"o_proj.{scale}": torch.ones(4, 1),
        "o_proj.input_scale": torch.ones(()),
    }
    save_file(sd, tmp_path / "m.safetensors")
    got = _classify_file(tmp_path / "m.safetensors")
    assert got["o_proj.weight"] == (*FROZEN, Rule.SCALED_WEIGHT)
    assert got[f"o_proj.{scale}"] == (*FROZEN, Rule.SCALED_WEIGHT)
    assert got["o_proj.input_scale"] == (*BUFFER, Rule.SCALED_WEIGHT)


def test_quantized_frozen_weights_are_not_offered_to_the_optimizer():
    """A QLoRA-style file: the optimizer holds only the float adapter; the packed weights stay frozen by rule."""
    from ckptboard.core.records import OptimizerParam, OptimizerState, TensorGroup, TensorInfo

    def info(name, shape, dtype):
        return TensorInfo("", name, name, shape, dtype, 1, 1)

    group = TensorGroup("", [
        info("l.weight", (4, 8), "int8"), info("l.SCB", (4,), "float32"),
        info("l.lora_A.weight", (2, 8), "float32"), info("l.lora_B.weight", (4, 2), "float32"),
    ])
    opt = OptimizerState("optimizer", [
        OptimizerParam(0, 0, {"exp_avg": (2, 8)}), OptimizerParam(1, 0, {"exp_avg": (4, 2)}),
    ])
    classify_tensors([group], [opt])
    got = _by_name(group)
    assert got["l.SCB"] == (*FROZEN, Rule.BNB_INT8)
    assert got["l.lora_A.weight"] == ("parameter", "true", Rule.OPTIMIZER_HELD)
    assert got["l.lora_B.weight"] == ("parameter", "true", Rule.OPTIMIZER_HELD)
