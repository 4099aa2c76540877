"""Hugging Face Trainer ``checkpoint-N/`` folders (written by the real Trainer), nanoGPT's two optimizer groups, the
layout registry, and the optimizer placement's cost on huge stateless optimizers."""

from __future__ import annotations

import pytest
from _fixtures_layouts import hf_trainer_run, nanogpt_checkpoint

from ckptboard.core.discover import file_identity
from ckptboard.core.classify import classify, classify_tensors
from ckptboard.core.discover import discover
from ckptboard.core.errors import UsageError
from ckptboard.core.layouts import Layout, detect, register, registered
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import CheckpointFormat, OptimizerParam, OptimizerState, StepSource, TensorGroup, TensorInfo


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    model = hf_trainer_run(root / "out")
    return root, model


def test_trainer_run_is_one_run_of_checkpoint_folders(trainer_run):
    root, _ = trainer_run
    runs = discover(root)
    assert [r.name for r in runs] == ["out"]
    assert [c.relpath for c in runs[0].checkpoints] == ["out/checkpoint-2", "out/checkpoint-4"]
    assert [c.step_hint for c in runs[0].checkpoints] == [2, 4]
    for ckpt in runs[0].checkpoints:  # the identity a task checks is the one discovery listed
        assert file_identity(ckpt.path) == ckpt.identity()


def test_trainer_checkpoint_step_and_optimizer_give_exact_trainable(trainer_run):
    root, model = trainer_run
    with open_checkpoint(root / "out" / "checkpoint-4") as ckpt:
        classify(ckpt)
        assert ckpt.format == CheckpointFormat.HF_TRAINER
        assert (ckpt.step, ckpt.step_source) == (4, StepSource.GLOBAL_STEP)
        assert [o.key_path for o in ckpt.optimizers] == ["optimizer.pt"]  # scheduler/rng/training_args ignored
        truth = {name: p.requires_grad for name, p in model.named_parameters()}
        verdicts = {t.name: t.trainable for t in ckpt.tensors}
        # GPT-2 ties lm_head to wte: safetensors keeps one of them, so every saved tensor is a named parameter
        assert set(verdicts) <= set(truth) and len(verdicts) == 28
        assert {n: v == "true" for n, v in verdicts.items()} == {n: truth[n] for n in verdicts}
        assert verdicts["transformer.wpe.weight"] == "false"
        assert any("placed by shape counts" in n for n in ckpt.notes)


def test_nanogpt_two_groups_align(tmp_path):
    model = nanogpt_checkpoint(tmp_path / "ckpt.pt")
    with open_checkpoint(tmp_path / "ckpt.pt") as ckpt:
        classify(ckpt)
        assert (ckpt.step, ckpt.step_source) == (100, StepSource.ITER_NUM)
        got = {t.name: t.trainable == "true" for t in ckpt.tensors}
    assert got == {name: p.requires_grad for name, p in model.named_parameters()}


def test_registry_refuses_a_second_layout_of_the_same_name():
    with pytest.raises(UsageError, match="registered twice"):

        @register
        class Again(Layout):
            name = "dcp"

    assert [layout.name for layout in registered()] == [
        "megatron_dist", "dcp", "deepspeed", "megatron", "peft", "hf_trainer", "accelerate", "hf_model"]


def test_register_before_puts_a_specific_layout_ahead_of_the_general_one():
    from ckptboard.core.layouts import _REGISTRY

    before = dict(_REGISTRY)
    try:
        @register(before="deepspeed")
        class Narrow(Layout):
            name = "narrow"

        assert [layout.name for layout in registered()][:4] == ["megatron_dist", "dcp", "narrow", "deepspeed"]
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(before)


def test_plain_folder_is_no_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert detect(tmp_path) is None
    assert detect(tmp_path / "notes.txt") is None


@pytest.mark.timeout(120)
def test_stateless_optimizer_placement_is_near_linear():
    # 200,000 zero-size entries and 100,000 optimizer entries without state: every slot's range spans 100,001
    # positions, so a quadratic placement would visit 100,000 * 100,001 ~ 1e10 positions (hours); linear is seconds.
    n = 200_000
    group = TensorGroup("", [TensorInfo("", f"m{i}.weight", f"m{i}.weight", (0,), "float32", 0, 0) for i in range(n)])
    opt = OptimizerState("opt", [OptimizerParam(i, 0) for i in range(n // 2)])
    result = classify_tensors([group], [opt])
    assert {t.trainable for t in group.tensors} == {"unknown"}
    assert any("200000 entries may or may not be held" in note for note in result.notes)
