"""FLOPs of transformers models built from their configs: counted on meta = FlopCounterMode on the real model."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from _fixtures_hf import build_hf, save_hf
from ckptboard.core.flop_estimate import estimate_flops
from ckptboard.core.flops import count_flops
from ckptboard.core.hf_inputs import default_inputs
from ckptboard.core.hf_model import build_from_config
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.train_flops import count_training_step
from ckptboard.dashboard.cli import main

pytest.importorskip("transformers")


def _reference(model: torch.nn.Module, specs) -> int:
    """FlopCounterMode around the real CPU model's forward on the same inputs (ids zeros, floats seeded).

    Eager attention: the CPU SDPA kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no formula in
    FlopCounterMode, so its two matmuls would count 0; eager attention computes them as counted matmuls.
    """
    model.set_attn_implementation("eager")
    gen = torch.Generator().manual_seed(0)
    kwargs = {s.name: s.make("cpu", gen) for s in specs}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**kwargs)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5", "vit", "whisper"])
def test_config_model_on_meta_counts_what_flop_counter_counts_on_the_real_model(tmp_path, name):
    real = save_hf(name, tmp_path / name)
    on_meta, _ = build_from_config(tmp_path / name)
    inputs = default_inputs(on_meta)
    report = count_flops(on_meta, inputs.specs)
    assert report.device == "meta"
    assert report.total_flops == _reference(real, inputs.specs)


def test_gpt2_total_by_hand(tmp_path):
    save_hf("gpt2", tmp_path / "g")
    model, _ = build_from_config(tmp_path / "g")
    inputs = default_inputs(model)
    assert [s.label for s in inputs.specs] == ["input_ids=(1,32) int64"]  # n_positions=32 < 128
    # d=16, T=32, V=64, one block: c_attn 2·16·48·T = 49,152; attn c_proj 2·16·16·T = 16,384; mlp c_fc and
    # c_proj 2·16·64·T = 65,536 each; scores q·kᵀ and attn·v 2·T·T·16 = 32,768 each; lm_head 2·16·64·T = 65,536.
    assert count_flops(model, inputs.specs).total_flops == 49_152 + 16_384 + 2 * 65_536 + 2 * 32_768 + 65_536


def test_training_step_counts_backward_and_states_6nd(tmp_path):
    model = build_hf("gpt2")
    inputs = default_inputs(model).specs
    step = count_training_step(model, inputs)
    assert step.forward_flops == count_flops(model, inputs).total_flops == 327_680
    # Backward of every matmul: one for the input gradient, one for the weight gradient.
    assert step.backward_flops == 2 * step.forward_flops
    n = sum(p.numel() for p in model.parameters())
    assert (step.trainable_parameters, step.tokens) == (n, 32)
    assert step.six_n_d == 6 * n * 32
    assert any("6·N·D" in a for a in step.assumptions)


def test_estimate_counts_the_tied_head_from_the_model_report(tmp_path, capsys):
    save_hf("gpt2", tmp_path / "g")
    assert main(["size", str(tmp_path / "g"), "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    head = [layer for layer in estimate["layers"] if layer["weight"] == "lm_head.weight"]
    assert head == [{"weight": "lm_head.weight", "module": "lm_head", "kind": "linear", "rule": "tied-head",
                     "shape": [64, 16], "flops": 2 * 64 * 16, "per": "token"}]
    # per token: c_attn 2·16·48 + attn c_proj 2·16·16 + c_fc 2·16·64 + mlp c_proj 2·64·16 + lm_head 2·64·16
    assert estimate["linear_flops_per_token"] == 1_536 + 512 + 2_048 + 2_048 + 2_048


def test_estimate_without_config_names_the_embedding_a_tied_head_would_use(tmp_path):
    save_hf("gpt2", tmp_path / "g")
    (tmp_path / "g" / "config.json").unlink()
    with open_checkpoint(tmp_path / "g" / "model.safetensors") as ckpt:
        est = estimate_flops(ckpt.tensors)
    assert all(layer.rule != "tied-head" for layer in est.layers)
    [caveat] = [c for c in est.caveats if "token embedding" in c]
    assert caveat.startswith("transformer.wte.weight (64, 16) is a token embedding") and "add 2,048 FLOP" in caveat


def test_flops_cli_counts_a_hugging_face_folder_without_model(tmp_path, capsys):
    save_hf("llama", tmp_path / "l")
    assert main(["flops", "--checkpoint", str(tmp_path / "l"), "--json", "--training-step", "--depth", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inputs"] == [{"shape": [1, 32], "dtype": "int64", "name": "input_ids"}]
    assert out["total_flops"] == out["training_step"]["forward_flops"]
    assert out["training_step"]["six_n_d"] == 6 * out["training_step"]["trainable_parameters"] * 32
    assert "model: LlamaForCausalLM built from" in out["notes"][0]


def test_estimate_without_transformers_counts_the_head_a_config_says_is_tied(tmp_path, monkeypatch, capsys):
    import sys

    save_hf("gpt2", tmp_path / "g")  # config.json says "tie_word_embeddings": true
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if transformers were not installed
    assert main(["flops", "--checkpoint", str(tmp_path / "g"), "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    [head] = [layer for layer in estimate["layers"] if layer["rule"] == "tied-head-config"]
    assert (head["weight"], head["flops"]) == ("transformer.wte.weight (tied output head)", 2 * 64 * 16)
    # the same per-token total as with the model's own tie (test above): 1,536 + 512 + 2,048 + 2,048 + 2,048
    assert estimate["linear_flops_per_token"] == 8_192
    assert any("pip install 'ckptboard[hf]'" in c for c in estimate["caveats"])
