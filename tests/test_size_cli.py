"""``ckptboard size`` on real checkpoints written by torch.save and safetensors, and ``flops --checkpoint``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from _fixtures_size import TiedLM
from ckptboard.dashboard.cli import main

TESTS = Path(__file__).resolve().parent
MODULE_KEYS = ["module", "depth", "parameters", "trainable", "frozen", "unknown", "buffers", "bytes",
               "parameter_bytes", "buffer_bytes", "bytes_by_dtype", "tied"]
SPEC_FILE = (  # --model names a class defined in the spec file itself
    f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport _fixtures_size\n\n\n"
    "class TiedLM(_fixtures_size.TiedLM):\n    pass\n"
)


def _trained_tied_lm() -> tuple[TiedLM, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    return model, opt


@pytest.fixture
def bare(tmp_path) -> Path:
    path = tmp_path / "tied.pt"
    torch.save(_trained_tied_lm()[0].state_dict(), path)
    return path


@pytest.fixture
def full(tmp_path) -> Path:
    model, opt = _trained_tied_lm()
    path = tmp_path / "full.ckpt"
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "optimizer": opt.state_dict(), "step": 1}, path)
    return path


@pytest.fixture
def spec(tmp_path) -> str:
    (tmp_path / "lm.py").write_text(SPEC_FILE)
    return f"{tmp_path / 'lm.py'}:TiedLM"


def _json(argv: list[str], capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bare_state_dict_json(bare, capsys):
    data = _json(["size", str(bare), "--json"], capsys)
    assert list(data) == ["path", "group", "total", "modules", "training_memory", "estimate", "notes"]
    assert data["path"] == str(bare) and data["group"] == ""
    assert [list(m) for m in data["modules"]] == [MODULE_KEYS] * 6
    # Without the model or an optimizer nothing tells trainable from frozen: all 68 elements are "unknown".
    # TiedLM: wte 10*4 = 40, block.0 Linear(4,4) 4*4 + 4 = 20, BatchNorm1d(4) weight + bias 8 -> 68 parameters;
    # lm_head.weight is wte.weight (tied): counted once. 68*4 = 272 B of parameters; buffers running_mean 4 +
    # running_var 4 float32 + num_batches_tracked 1 int64 = 9 elements, 8*4 + 8 = 40 B; bytes 272 + 40 = 312;
    # float32 272 + 32 = 304.
    assert data["total"] == {
        "parameters": 68, "trainable": 0, "frozen": 0, "unknown": 68, "buffers": 9, "bytes": 312,
        "parameter_bytes": 272, "buffer_bytes": 40, "bytes_by_dtype": {"float32": 304, "int64": 8}, "tied": 1,
    }
    assert [m["module"] for m in data["modules"]] == ["", "wte", "block", "block.0", "block.1", "lm_head"]
    assert data["modules"][-1]["tied"] == 1 and data["modules"][-1]["bytes"] == 0
    memory = data["training_memory"]
    # adam assumed: gradients 68*4 = 272, states 2*4*68 = 544
    assert (memory["optimizer"], memory["gradients_bytes"], memory["optimizer_state_bytes"]) == (
        "adam", {"float32": 272}, {"float32": 544})
    assert data["estimate"]["label"].startswith("ESTIMATE")
    assert data["estimate"]["linear_flops_per_token"] == 2 * 16 + 2 * 40  # block.0 4x4, lm_head 10x4; wte by name: 0


def test_model_spec_decides_trainable(bare, spec, capsys):
    total = _json(["size", str(bare), "--model", spec, "--json"], capsys)["total"]
    # block.0 Linear(4,4) is frozen: 20; wte 40 + BatchNorm 8 trainable
    assert (total["trainable"], total["frozen"], total["unknown"]) == (48, 20, 0)


def test_lightning_like_dict_uses_its_optimizer_and_names_other_groups(full, capsys):
    data = _json(["size", str(full), "--json", "--depth", "1"], capsys)
    assert data["group"] == "model"
    assert [m["module"] for m in data["modules"]] == ["", "wte", "block", "lm_head"]
    assert any("'ema'" in n for n in data["notes"])
    memory = data["training_memory"]
    # SGD momentum buffers for the parameters that got a gradient: wte 40 + BN 4 + 4 = 48 elements * 4 B
    assert memory["optimizer"] == "checkpoint" and memory["optimizer_source"] == "checkpoint: 'optimizer'"
    assert memory["optimizer_state_bytes"] == {"float32": 192}
    adam = _json(["size", str(full), "--json", "--optimizer", "adam"], capsys)["training_memory"]
    assert adam["optimizer_state_bytes"] == {"float32": 2 * 4 * 48}  # the optimizer held 48 trainable elements


def test_a_group_sharing_another_groups_storage_still_counts_its_own_bytes(full, capsys):
    data = _json(["size", str(full), "--json", "--group", "ema"], capsys)
    # the ema group is another TiedLM state_dict: 272 B of parameters + 40 B of buffers = 312
    # (as in test_bare_state_dict_json)
    assert data["group"] == "ema" and data["total"]["bytes"] == 312 and data["total"]["tied"] == 1


def test_safetensors_file(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5)).to(torch.float16)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    total = _json(["size", str(path), "--json"], capsys)["total"]
    # Linear 15 + 5, LayerNorm 5 + 5 = 30 float16 elements = 60 B
    assert (total["parameters"], total["bytes"], total["bytes_by_dtype"]) == (30, 60, {"float16": 60})


def test_text_output(full, capsys):
    assert main(["size", str(full)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{full}  ('model')")
    assert "(model)" in out and "  lm_head" in out and "    0" in out
    assert "training memory ESTIMATE, optimizer checkpoint" in out and "assumptions:" in out
    assert "FLOP ESTIMATE from weight shapes alone" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--group", "nope"], r"^UsageError: .*no state_dict 'nope'; it holds 'ema', 'model'$"),
    (["--depth", "-2"], r"^UsageError: --depth -2"),
])
def test_bad_options(full, capsys, argv, message):
    rc = main(["size", str(full), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_optimizer_checkpoint_on_a_file_without_one(bare, capsys):
    assert main(["size", str(bare), "--optimizer", "checkpoint"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"UsageError: {bare}: --optimizer checkpoint, but the file holds no optimizer state; "
        "pick adam, adamw, sgd-momentum or sgd"
    )


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_bad_file_gives_one_line(tmp_path, capsys, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    assert main(["size", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err


def test_flops_with_checkpoint_shows_sizes_on_the_same_tree(full, spec, capsys):
    data = _json(["flops", "--model", spec, "--input-shape", "3", "--input-dtype", "int64", "--checkpoint", str(full),
                  "--json"], capsys)
    rows = {m["module"]: m for m in data["modules"]}
    # block.0 Linear(4,4) on 3 rows: 2*3*4*4 = 96; lm_head Linear(4,10): 2*3*4*10 = 240; 96 + 240 = 336.
    # parameters 68 and bytes 312: the model group, as in test_bare_state_dict_json
    assert rows[""]["flops"] == 336 and rows[""]["parameters"] == 68 and rows[""]["bytes"] == 312
    assert (rows["lm_head"]["flops"], rows["lm_head"]["parameters"]) == (240, 0)
    assert rows["block.1"]["buffers"] == 9
    assert data["checkpoint"] == str(full) and data["group"] == "model" and data["checkpoint_only_modules"] == []
    assert main(["flops", "--model", spec, "--input-shape", "3", "--input-dtype", "int64", "--checkpoint",
                 str(full)]) == 0
    out = capsys.readouterr().out
    assert "parameters  buffers  bytes" in out and "checkpoint: " in out


def test_flops_estimate_only_from_a_checkpoint(full, capsys):
    data = _json(["flops", "--checkpoint", str(full), "--json"], capsys)
    assert list(data) == ["path", "estimate"] and "total_flops" not in data
    # block.0.weight 2*4*4 = 32; lm_head.weight 2*4*10 = 80; wte.weight is an embedding by name: 0
    assert data["estimate"]["linear_flops_per_token"] == 112


def test_checkpoint_names_are_mapped_into_the_models_namespace(tmp_path, spec, capsys):
    path = tmp_path / "prefixed.ckpt"
    model, _ = _trained_tied_lm()
    torch.save({"state_dict": {f"net.{k}": v for k, v in model.state_dict().items()}}, path)
    data = _json(["size", str(path), "--model", spec, "--json", "--depth", "1"], capsys)
    assert [m["module"] for m in data["modules"]] == ["", "wte", "block", "lm_head"]  # "net." stripped
    flops = _json(["flops", "--model", spec, "--input-shape", "3", "--input-dtype", "int64", "--checkpoint", str(path),
                   "--json"], capsys)
    assert {m["module"]: m["parameters"] for m in flops["modules"]}["wte"] == 40
    assert flops["checkpoint_only_modules"] == []


def test_sample_checkpoint_with_its_model(capsys):
    sample = TESTS.parent / "sample_ckpts"
    data = _json(["size", str(sample / "adamw_lr1e-3" / "epoch=0-step=30.ckpt"), "--model",
                  f"{sample / 'model.py'}:SmallCNN", "--json"], capsys)
    # conv1 3*16*9 = 432 (frozen), bn1 32, conv2 16*32*9 = 4608, bn2 64, conv3 32*32*9 = 9216, bn3 64,
    # head 32*4 + 4 = 132 → 14548 parameters, 14116 trainable
    # buffers: input_mean 3 + BN (16+16+1) + (32+32+1) * 2 = 166; bytes 14548*4 + 163*4 + 3*8 = 58868
    total = data["total"]
    assert (total["parameters"], total["trainable"], total["frozen"], total["buffers"], total["bytes"]) == (
        14548, 14116, 432, 166, 58868)
    # AdamW in the file: exp_avg + exp_avg_sq over the 14116 trainable elements, plus 10 float32 steps
    assert data["training_memory"]["optimizer_state_bytes"] == {"float32": 14116 * 4 * 2 + 10 * 4}
