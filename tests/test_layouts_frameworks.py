"""accelerate ``save_state``, PEFT adapters and Lightning's ``last.ckpt`` alias, each written by the real library."""

from __future__ import annotations

import os

import pytest
from _fixtures_layouts import accelerate_run, lightning_run, peft_adapter
from safetensors.torch import save_file

from ckptboard.core.classify import classify
from ckptboard.core.discover import discover
from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import CheckpointFormat, StepSource
from ckptboard.core.summarize import summarize
from ckptboard.dashboard.cli import main


@pytest.fixture(scope="module")
def accelerate_project(tmp_path_factory):
    project = tmp_path_factory.mktemp("accelerate") / "project"
    models = accelerate_run(project)
    return project, models


def test_accelerate_checkpoints_are_one_run_with_steps_from_the_folder(accelerate_project):
    project, _ = accelerate_project
    runs = discover(project)
    assert [r.name for r in runs] == ["checkpoints"]
    # optimizer.bin, random_states_0.pkl … are inside the checkpoint folders: never listed on their own
    assert [c.relpath for c in runs[0].checkpoints] == [f"checkpoints/checkpoint_{i}" for i in range(3)]
    assert [c.step_hint for c in runs[0].checkpoints] == [0, 1, 2]


def test_accelerate_groups_by_file_and_trainable_from_each_optimizer(accelerate_project):
    project, (first, second) = accelerate_project
    with open_checkpoint(project / "checkpoints" / "checkpoint_2") as ckpt:
        classify(ckpt)
        assert ckpt.format == CheckpointFormat.ACCELERATE
        assert (ckpt.step, ckpt.step_source) == (2, StepSource.FILENAME)
        assert [g.name for g in ckpt.groups] == ["model", "model_1"]  # same tensor names, told apart by file
        assert sorted(o.key_path for o in ckpt.optimizers) == ["optimizer.bin", "optimizer_1.bin"]
        got = {(t.group, t.name): t.trainable == "true" for t in ckpt.tensors}
    truth = {("model", n): p.requires_grad for n, p in first.named_parameters()}
    truth.update({("model_1", n): p.requires_grad for n, p in second.named_parameters()})
    assert got == truth


def test_accelerate_folder_without_a_model_file_fails_alone(accelerate_project, tmp_path, capsys):
    project, _ = accelerate_project
    run = tmp_path / "checkpoints"
    for i in (0, 1):
        target = run / f"checkpoint_{i}"
        target.mkdir(parents=True)
        for f in (project / "checkpoints" / f"checkpoint_{i}").iterdir():
            if not (i == 1 and f.name.startswith("model")):
                (target / f.name).write_bytes(f.read_bytes())
        os.utime(target, ns=(10**18, 10**18))  # long ago: damaged, not being written
    with pytest.raises(CorruptCheckpointError, match="accelerate save_state folder with no model file"):
        open_checkpoint(run / "checkpoint_1")
    report = summarize(tmp_path)
    assert report.checkpoints == 1 and [f.relpath for f in report.failures] == ["checkpoints/checkpoint_1"]
    assert main(["inspect", str(run / "checkpoint_1")]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("CorruptCheckpointError: ") and err.strip().count("\n") == 0


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_peft_adapter_tensors_are_trainable_and_name_the_base_model(tmp_path, kind):
    model = peft_adapter(tmp_path / "adapter-10", kind)
    with open_checkpoint(tmp_path / "adapter-10") as ckpt:
        classify(ckpt)
        assert ckpt.format == CheckpointFormat.PEFT
        assert ckpt.step == 10
        assert "PEFT" in ckpt.notes[0] and "local/tiny-gpt2" in ckpt.notes[0]
        assert ckpt.metadata["base_model_name_or_path"] == "local/tiny-gpt2"
        assert {t.trainable for t in ckpt.tensors} == {"true"} and {t.source for t in ckpt.tensors} == {"peft:adapter"}
        # the file holds exactly the trainable parameters of the PEFT model (save_pretrained drops ".default")
        trained = {n.replace(".default", "") for n, p in model.named_parameters() if p.requires_grad}
        assert {t.name for t in ckpt.tensors} == trained


def test_peft_config_without_weights_is_an_error(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(CorruptCheckpointError, match="adapter_model.safetensors or adapter_model.bin"):
        open_checkpoint(tmp_path / "adapter")


def test_lightning_last_ckpt_is_an_alias_not_a_second_point(tmp_path):
    version = lightning_run(tmp_path)
    runs = discover(tmp_path)
    run = next(r for r in runs if r.name.endswith("checkpoints"))
    assert [c.path.name for c in run.checkpoints] == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    assert [(a.path.name, a.alias_of.rpartition("/")[2]) for a in run.aliases] == [("last.ckpt", "epoch=0-step=4.ckpt")]
    assert (version / "metrics.csv").is_file()
    report = summarize(tmp_path)
    assert report.checkpoints == 2  # last.ckpt is not summarised a second time
    alias, original = next(iter(report.aliases.items()))
    assert (alias.rpartition("/")[2], original.rpartition("/")[2]) == ("last.ckpt", "epoch=0-step=4.ckpt")
    assert "1 alias(es) shown once" in report.line()

    from _fixtures_app import app_test

    at = app_test(str(tmp_path))
    at.run()
    at.run()  # a filled cache is drawn first and checked for new checkpoints after the page; the next run shows it
    assert not at.exception, [e.value for e in at.exception]
    assert any("last.ckpt" in c.value and "Shown once" in c.value for c in at.caption)


def test_a_stepless_copy_with_other_tensors_is_no_alias(tmp_path):
    import torch

    save_file({"w": torch.ones(2)}, tmp_path / "step_1.safetensors")
    torch.save({"w": torch.ones(2), "global_step": 1}, tmp_path / "step_2.pt")
    torch.save({"w": torch.zeros(2), "global_step": 2}, tmp_path / "last.pt")  # other bytes: a checkpoint of its own
    names = [c.path.name for c in discover(tmp_path)[0].checkpoints]
    assert names == ["step_1.safetensors", "step_2.pt", "last.pt"]


@pytest.mark.slow
def test_accelerate_fsdp_sharded_state_is_read_from_its_dcp_folders(tmp_path):
    import torch
    from _fixtures_layouts import accelerate_fsdp_run
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from ckptboard.core.gradients import gradient_rows

    accelerate_fsdp_run(tmp_path / "project", saves=2)  # two gloo ranks: pytorch_model_fsdp_0/ + optimizer_0/
    runs = discover(tmp_path / "project")
    assert [(r.name, [c.relpath for c in r.checkpoints]) for r in runs] == [
        ("checkpoints", ["checkpoints/checkpoint_0", "checkpoints/checkpoint_1"])]
    folder = tmp_path / "project" / "checkpoints" / "checkpoint_1"
    assert runs[0].checkpoints[1].size == sum(  # every DCP file is in the identity; random_states are not
        f.stat().st_size for sub in ("pytorch_model_fsdp_0", "optimizer_0") for f in (folder / sub).iterdir())
    for sub in ("pytorch_model_fsdp_0", "optimizer_0"):  # DCP's own reading of what accelerate wrote
        dcp_to_torch_save(folder / sub, tmp_path / f"{sub}.pt")
    model = torch.load(tmp_path / "pytorch_model_fsdp_0.pt", weights_only=True)["model"]
    optim = torch.load(tmp_path / "optimizer_0.pt", weights_only=False)["optimizer"]  # written just now, by DCP
    with open_checkpoint(folder) as ckpt:
        classify(ckpt)
        assert ckpt.format == CheckpointFormat.ACCELERATE and (ckpt.step, ckpt.step_source) == (1, StepSource.FILENAME)
        assert [g.name for g in ckpt.groups] == ["pytorch_model_fsdp_0/model"]
        assert [o.key_path for o in ckpt.optimizers] == ["optimizer_0/optimizer"]
        assert {t.name: t.trainable for t in ckpt.tensors} == {  # the LayerNorm weight is frozen (dcp_model)
            "0.weight": "true", "0.bias": "true", "1.weight": "false", "1.bias": "true", "2.weight": "true",
            "2.bias": "true"}
        for info in ckpt.tensors:  # both ranks' row chunks, put back in place
            assert torch.equal(ckpt.load(info), model[info.name]), info.name
        rows, notes = gradient_rows(ckpt)
    assert not notes and len(rows) == 5
    group = optim["param_groups"][0]  # AdamW lr 1e-2, betas (0.9, 0.99); two steps taken
    for row in rows:
        state = optim["state"][row["name"]]
        v_hat = state["exp_avg_sq"].double() / (1 - group["betas"][1] ** float(state["step"]))
        assert row["opt_step"] == 2 and row["lr"] == group["lr"] == 1e-2
        assert row["grad_rms"] == pytest.approx(v_hat.mean().sqrt().item(), rel=1e-6)


def test_accelerate_fsdp_per_rank_files_are_refused_with_a_reason(tmp_path):
    import torch

    # accelerate/utils/fsdp_utils.py names for LOCAL_STATE_DICT (or use_dcp=False): one flat shard per rank
    folder = tmp_path / "checkpoint_0"
    folder.mkdir()
    for rank in (0, 1):
        torch.save({"_flat_param": torch.zeros(4)}, folder / f"pytorch_model_fsdp_0_rank{rank}.bin")
        torch.save({"step": rank}, folder / f"random_states_{rank}.pkl")
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint_0: FSDP per-rank files \(pytorch_model_fsdp_0_rank0"):
        open_checkpoint(folder)
