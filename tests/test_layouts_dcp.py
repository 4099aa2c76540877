"""torch.distributed.checkpoint folders written by the real ``dcp.save`` (FSDP2 over two gloo ranks, and single
process): listed from ``.metadata`` alone, read chunk by chunk, optimizer entries used for trainable only."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from _fixtures_layouts import CodeRunningPayload, dcp_single_save, fsdp2_save
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from ckptboard.core.classify import classify
from ckptboard.core.discover import discover
from ckptboard.core.errors import CorruptCheckpointError, UnsafeCheckpointError
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import CheckpointFormat, StepSource
from ckptboard.core.summarize import summarize
from ckptboard.core.load import load_stats
from ckptboard.dashboard.cli import main

_TRUTH = {"0.weight": True, "0.bias": True, "1.weight": False, "1.bias": True, "2.weight": True, "2.bias": True}


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp2")
    fsdp2_save(root / "run" / "step-10")
    dcp_to_torch_save(root / "run" / "step-10", root / "whole.pt")  # DCP's own conversion: the reference values
    return root


@pytest.mark.slow
def test_fsdp2_tensors_listed_from_metadata_and_chunks_assembled(fsdp2):
    reference = torch.load(fsdp2 / "whole.pt", weights_only=True)
    with open_checkpoint(fsdp2 / "run" / "step-10") as ckpt:
        classify(ckpt)
        assert ckpt.format == CheckpointFormat.DCP
        assert (ckpt.step, ckpt.step_source) == (10, StepSource.FILENAME)
        assert [g.name for g in ckpt.groups] == ["model"]
        # optimizer entries (optim.state.*.exp_avg…) are never model tensors
        assert [t.name for t in ckpt.tensors] == list(_TRUTH)
        assert {t.name: t.trainable == "true" for t in ckpt.tensors} == _TRUTH
        assert {t.source for t in ckpt.tensors} == {"optimizer:held", "optimizer:not-held"}
        assert ckpt.tensors[0].shape == (6, 8) and ckpt.tensors[0].nbytes == 6 * 8 * 4
        for info in ckpt.tensors:  # two row chunks, one per rank's file, put back in place
            assert torch.equal(ckpt.load(info), reference["model"][info.name]), info.name


@pytest.mark.slow
def test_listing_reads_no_tensor_data(fsdp2, tmp_path):
    folder = tmp_path / "step-10"
    folder.mkdir()
    for f in (fsdp2 / "run" / "step-10").iterdir():
        # same sizes, no content: listing works from .metadata alone; loading finds no archive
        (folder / f.name).write_bytes(f.read_bytes() if f.name == ".metadata" else bytes(f.stat().st_size))
    with open_checkpoint(folder) as ckpt:
        assert [t.name for t in ckpt.tensors] == list(_TRUTH)
        with pytest.raises(CorruptCheckpointError, match="no torch.save zip"):
            ckpt.load(ckpt.tensors[0])


@pytest.mark.slow
def test_dcp_statistics_equal_those_of_the_whole_file(fsdp2):
    report = summarize(fsdp2)
    assert report.ok and report.checkpoints == 2, report.failures
    tensors = load_stats(fsdp2).tensors
    dcp_rows = tensors[tensors.checkpoint == "run/step-10"].set_index("name").sort_index()
    whole = tensors[(tensors.checkpoint == "whole.pt") & (tensors.group == "model")].set_index("name").sort_index()
    stats = ["mean", "std", "min", "max", "abs_mean", "norm", "zeros", "nans", "p50", "numel"]
    assert dcp_rows[stats].equals(whole[stats])


def test_single_process_steps_are_one_run(tmp_path):
    for step in (100, 200):
        dcp_single_save(tmp_path / "run" / f"step-{step}", seed=step)
    runs = discover(tmp_path)
    assert [r.name for r in runs] == ["run"]
    assert [c.relpath for c in runs[0].checkpoints] == ["run/step-100", "run/step-200"]
    # identity covers .metadata and the .distcp file
    folder = runs[0].checkpoints[0]
    assert folder.size == sum(f.stat().st_size for f in folder.path.iterdir())


def test_flat_keys_beside_the_optimizer(tmp_path):
    model = dcp_single_save(tmp_path / "step-5", flat=True)
    with open_checkpoint(tmp_path / "step-5") as ckpt:
        classify(ckpt)
        assert [g.name for g in ckpt.groups] == [""]
        assert {t.name: t.trainable == "true" for t in ckpt.tensors} == _TRUTH
        assert [o.key_path for o in ckpt.optimizers] == ["optimizer"]
        assert torch.equal(ckpt.load(ckpt.tensors[0]), model[0].weight.detach())


def _old(path):
    os.utime(path, ns=(10**18, 10**18))  # long ago: a failing folder is damaged, not being written


def _bad_run(tmp_path):
    """Three checkpoints: one good, one with a missing .distcp, one truncated."""
    run = tmp_path / "run"
    for step in (1, 2, 3):
        dcp_single_save(run / f"step-{step}")
    (run / "step-2" / "__0_0.distcp").unlink()
    shard = run / "step-3" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    for step in (1, 2, 3):
        for f in (run / f"step-{step}").iterdir():
            _old(f)
        _old(run / f"step-{step}")
    return run


def test_missing_or_truncated_distcp_fails_alone(tmp_path, capsys):
    run = _bad_run(tmp_path)
    with pytest.raises(CorruptCheckpointError, match=r"step-2: __0_0.distcp is missing"):
        open_checkpoint(run / "step-2")
    with pytest.raises(CorruptCheckpointError, match=r"step-3: __0_0.distcp is truncated"):
        open_checkpoint(run / "step-3")
    report = summarize(tmp_path)
    assert report.checkpoints == 1
    assert sorted(f.relpath for f in report.failures) == ["run/step-2", "run/step-3"]
    assert main(["inspect", str(run / "step-2")]) == 1
    out, err = capsys.readouterr()
    assert err.strip().count("\n") == 0 and err.startswith("CorruptCheckpointError: ")
    assert "Traceback" not in out + err


def test_metadata_naming_code_is_refused_and_never_run(tmp_path, capsys):
    folder = tmp_path / "step-1"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / ".metadata").write_bytes(pickle.dumps(CodeRunningPayload(marker)))
    (folder / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata calls posix.system"):
        open_checkpoint(folder)
    assert main(["inspect", str(folder)]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("UnsafeCheckpointError: ") and err.strip().count("\n") == 0
    assert not marker.exists()


def test_metadata_with_a_foreign_class_is_refused(tmp_path):
    folder = tmp_path / "step-1"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(CheckpointFormat.DCP))
    (folder / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="ckptboard.core.records.CheckpointFormat is no DCP metadata"):
        open_checkpoint(folder)


def test_lightning_sharded_ckpt_folder_takes_its_step_from_meta_pt(tmp_path):
    # lightning/pytorch/strategies/fsdp.py save_checkpoint (sharded): dcp.save of {"model": state_dict,
    # "optimizer_0": …} into the ``*.ckpt`` folder, then torch.save of the remaining checkpoint dict as meta.pt
    folder = tmp_path / "epoch=1-step=7.ckpt"
    dcp_single_save(folder)
    torch.save({"epoch": 1, "global_step": 7, "pytorch-lightning_version": "2.6.6", "loops": {}, "callbacks": {}},
               folder / "meta.pt")
    runs = discover(tmp_path)
    assert [c.relpath for c in runs[0].checkpoints] == ["epoch=1-step=7.ckpt"]
    with open_checkpoint(folder) as ckpt:
        assert (ckpt.step, ckpt.step_source) == (7, StepSource.GLOBAL_STEP)
        assert ckpt.metadata["pytorch-lightning_version"] == "2.6.6"


@pytest.mark.slow
def test_fsdp2_optimizer_chunks_give_the_gradients_of_the_whole_state(fsdp2):
    from ckptboard.core.gradients import gradient_rows

    reference = torch.load(fsdp2 / "whole.pt", weights_only=False)  # DCP's own conversion of the folder
    states = reference["optim"]["state"]
    group = reference["optim"]["param_groups"][0]  # one AdamW group: lr 1e-2, betas (0.9, 0.999), eps 1e-8
    with open_checkpoint(fsdp2 / "run" / "step-10") as ckpt:
        classify(ckpt)
        rows, notes = gradient_rows(ckpt)
    assert not notes and sorted(r["name"] for r in rows) == sorted(n for n, t in _TRUTH.items() if t)
    for row in rows:  # each state tensor put back together from both ranks' row chunks
        state = states[row["name"]]
        b1, b2 = group["betas"]
        v_hat = state["exp_avg_sq"].double() / (1 - b2 ** float(state["step"]))  # one step: t = 1
        m_hat = state["exp_avg"].double() / (1 - b1 ** float(state["step"]))
        assert row["opt_step"] == 1.0 and row["lr"] == group["lr"]
        assert row["grad_rms"] == pytest.approx(v_hat.mean().sqrt().item(), rel=1e-6)
        update = group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])
        assert row["update_norm"] == pytest.approx(torch.linalg.norm(update).item(), rel=1e-6)
        assert row["weight_norm"] == pytest.approx(torch.linalg.norm(reference["model"][row["name"]]).item(), rel=1e-6)
