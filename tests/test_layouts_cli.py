"""Every layout under one ROOT: each checkpoint folder is one checkpoint of its run in ``inspect --json``,
``summarize`` and ``export``, and nothing else (optimizer, RNG, scheduler, log files) is listed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _fixtures_layouts import (
    accelerate_run,
    dcp_single_save,
    deepspeed_checkpoint,
    hf_trainer_run,
    megatron_checkpoint,
    peft_adapter,
)

from ckptboard.core.discover import discover
from ckptboard.dashboard.cli import main

# run folder -> (its checkpoints, their format)
EXPECTED = {
    "accelerate/checkpoints": (["checkpoint_0", "checkpoint_1", "checkpoint_2"], "accelerate"),
    "dcp": (["step-1", "step-2"], "dcp"),
    "deepspeed": (["global_step1", "global_step2"], "deepspeed"),
    "megatron": (["iter_0000010", "iter_0000020"], "megatron"),
    "peft": (["adapter-1"], "peft"),
    "trainer": (["checkpoint-2", "checkpoint-4"], "hf-trainer"),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    accelerate_run(root / "accelerate")
    for step in (1, 2):
        dcp_single_save(root / "dcp" / f"step-{step}", seed=step)
        deepspeed_checkpoint(root / "deepspeed", f"global_step{step}", stage=step + 1, seed=step)
        megatron_checkpoint(root / "megatron", 10 * step, seed=step)
    peft_adapter(root / "peft" / "adapter-1")
    hf_trainer_run(root / "trainer")
    return root


def test_each_checkpoint_folder_is_one_checkpoint_of_its_run(zoo):
    runs = {r.name: [c.relpath.rpartition("/")[2] for c in r.checkpoints] for r in discover(zoo)}
    assert runs == {name: names for name, (names, _) in EXPECTED.items()}


def test_inspect_json_names_the_layout(zoo, capsys):
    for run, (names, fmt) in EXPECTED.items():
        assert main(["inspect", str(zoo / run / names[-1]), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["format"] == fmt, run
        assert report["tensors"] and report["step"] is not None, run


def test_summarize_and_export_read_every_layout(zoo, tmp_path, capsys):
    assert main(["export", str(zoo), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    checkpoints = pd.read_csv(tmp_path / "out" / "checkpoints.csv")
    assert pd.read_csv(tmp_path / "out" / "errors.csv").empty
    got = {run: (sorted(c.rpartition("/")[2] for c in frame["checkpoint"]), set(frame["format"]))
           for run, frame in checkpoints.groupby("run")}
    assert got == {run: (names, {fmt}) for run, (names, fmt) in EXPECTED.items()}
    # the Trainer's logged loss, learning rate, … made it into the training scalars
    scalars = pd.read_csv(tmp_path / "out" / "training_scalars.csv")
    assert set(scalars["run"]) == {"trainer"} and "loss" in set(scalars["name"])
