"""DeepSpeed ``global_stepN/`` (ZeRO-2 and ZeRO-3) and Megatron-LM legacy ``iter_NNNNNNN/`` folders. Neither library
runs on this machine's CPU: the fixtures write the folders exactly as their save code does (see their docstrings)."""

from __future__ import annotations

import os

import pytest
import torch
from _fixtures_layouts import deepspeed_checkpoint, deepspeed_pickling, megatron_checkpoint

from ckptboard.core.classify import classify
from ckptboard.core.discover import discover
from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import CheckpointFormat, StepSource
from ckptboard.core.summarize import summarize
from ckptboard.dashboard.cli import main


@pytest.fixture(scope="module")
def deepspeed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepspeed")
    models = {10: deepspeed_checkpoint(root, "global_step10", stage=2),
              20: deepspeed_checkpoint(root, "global_step20", stage=3, seed=1)}
    return root, models


def _truth(model):
    params = {n: ("parameter", "true" if p.requires_grad else "false") for n, p in model.named_parameters()}
    params["head.weight"] = params["emb.weight"]  # tied: named_parameters() lists it once
    return {**params, **{n: ("buffer", "false") for n, _ in model.named_buffers()}}


def test_global_step_folders_are_one_run(deepspeed_run):
    root, _ = deepspeed_run
    runs = discover(root)
    # latest and zero_to_fp32.py are no checkpoints; the rank files are inside their tag folder
    assert [(r.name, [c.relpath for c in r.checkpoints]) for r in runs] == [(".", ["global_step10", "global_step20"])]


@pytest.mark.parametrize("step", [10, 20], ids=["zero2", "zero3"])
def test_deepspeed_verdicts_are_exact_and_values_rebuilt(deepspeed_run, step):
    root, models = deepspeed_run
    model = models[step]
    with open_checkpoint(root / f"global_step{step}") as ckpt:
        classify(ckpt)
        assert ckpt.format == CheckpointFormat.DEEPSPEED
        assert (ckpt.step, ckpt.step_source) == (step, StepSource.FILENAME)
        assert {t.name: (t.kind, t.trainable) for t in ckpt.tensors} == _truth(model)
        assert {t.source for t in ckpt.tensors} == {"deepspeed:param_shapes", "deepspeed:frozen_param_shapes",
                                                   "deepspeed:buffer_names"}
        assert next(t for t in ckpt.tensors if t.name == "head.weight").tied_to == "emb.weight"
        expected = model.state_dict()
        for info in ckpt.tensors:
            assert torch.equal(ckpt.load(info), expected[info.name]), info.name
        if step == 20:
            # fc.weight: 15 elements over 2 ranks -> 8 per rank, the last one padding (ceil(15 / 2) = 8)
            assert any("ZeRO-3 over 2 data-parallel ranks" in n for n in ckpt.notes)


def test_zero3_partitions_that_do_not_match_param_shapes_are_refused(tmp_path):
    deepspeed_checkpoint(tmp_path, "global_step5", stage=3)
    for rank in (0, 1):
        path = tmp_path / "global_step5" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        with deepspeed_pickling():
            state = torch.load(path, weights_only=False)
            flat = state["optimizer_state_dict"]["fp32_flat_groups"]
            flat[0] = flat[0][:-1].clone()  # one element short on every rank
            torch.save(state, path)
    with pytest.raises(CorruptCheckpointError, match="param group 0: consumed"):
        open_checkpoint(tmp_path / "global_step5")


def test_deepspeed_folder_without_model_states_fails_alone(tmp_path, capsys):
    deepspeed_checkpoint(tmp_path, "global_step1", stage=2)
    deepspeed_checkpoint(tmp_path, "global_step2", stage=2)
    broken = tmp_path / "global_step2"
    (broken / "mp_rank_00_model_states.pt").unlink()
    os.utime(broken, ns=(10**18, 10**18))  # long ago: damaged, not being written
    assert main(["inspect", str(broken)]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("CorruptCheckpointError: ") and "without its model-states file" in err
    assert err.strip().count("\n") == 0
    report = summarize(tmp_path)
    assert report.checkpoints == 1 and [f.relpath for f in report.failures] == ["global_step2"]


def test_megatron_tensor_parallel_ranks_are_groups(tmp_path):
    sds = megatron_checkpoint(tmp_path, 100, tp=2)
    megatron_checkpoint(tmp_path, 200, tp=2, seed=1)
    runs = discover(tmp_path)
    assert [(r.name, [c.relpath for c in r.checkpoints]) for r in runs] == [(".", ["iter_0000100", "iter_0000200"])]
    with open_checkpoint(tmp_path / "iter_0000100") as ckpt:
        classify(ckpt)
        assert ckpt.format == CheckpointFormat.MEGATRON
        assert (ckpt.step, ckpt.step_source) == (100, StepSource.ITERATION)
        # the fp32 master copies and the RNG state are not model tensors
        assert [g.name for g in ckpt.groups] == ["mp_rank_00/model", "mp_rank_01/model"]
        assert any("tensor-parallel slices are not concatenated" in n for n in ckpt.notes)
        for rank, sd in enumerate(sds):
            group = [t for t in ckpt.tensors if t.group == f"mp_rank_{rank:02d}/model"]
            assert [t.name for t in group] == list(sd)
            for info in group:
                assert torch.equal(ckpt.load(info), sd[info.name])
        # each rank's optimizer lines up with its own rank's group: every parameter held
        assert {t.trainable for t in ckpt.tensors} == {"true"}
        assert [o.key_path for o in ckpt.optimizers] == [
            "mp_rank_00/optimizer/optimizer", "mp_rank_01/optimizer/optimizer"]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_model_parallel_ranks_are_groups(tmp_path, stage):
    # tensor parallelism 2 x data parallelism 2: under ZeRO-3 each model-parallel rank's weights come from its own
    # zero_pp_rank_{0,1}_mp_rank_XX partitions only (mp_rank_01's are not more data-parallel ranks of mp_rank_00's)
    models = deepspeed_checkpoint(tmp_path, "global_step30", stage=stage, world=2, mp=2)
    names = sorted(p.name for p in (tmp_path / "global_step30").iterdir())
    assert "zero_pp_rank_1_mp_rank_01_optim_states.pt" in names
    with open_checkpoint(tmp_path / "global_step30") as ckpt:
        classify(ckpt)
        assert [g.name for g in ckpt.groups] == ["mp_rank_00", "mp_rank_01"]
        assert any("2 model-parallel ranks, one group each" in n for n in ckpt.notes)
        for rank, model in enumerate(models):
            expected = model.state_dict()
            group = [t for t in ckpt.tensors if t.group == f"mp_rank_{rank:02d}"]
            assert {t.name: (t.kind, t.trainable) for t in group} == _truth(model)
            for info in group:
                assert torch.equal(ckpt.load(info), expected[info.name]), (rank, info.name)
