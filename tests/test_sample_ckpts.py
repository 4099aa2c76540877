"""The committed sample run is what make_samples.py writes, and the script still trains."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_ckpts"


@pytest.fixture
def make_samples(monkeypatch):
    monkeypatch.syspath_prepend(str(SAMPLES))
    spec = importlib.util.spec_from_file_location("make_samples_under_test", SAMPLES / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("model", None)


def test_committed_runs_have_sixteen_checkpoints_each():
    for run, pattern in [("adamw_lr1e-3", "*.ckpt"), ("adamw_lr1e-2", "*.ckpt"), ("sgd_safetensors", "*.safetensors")]:
        assert len(sorted((SAMPLES / run).glob(pattern))) == 16, run
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 16 * 2**20


def test_short_run_writes_lightning_dicts_with_optimizer_state(make_samples, tmp_path, monkeypatch):
    monkeypatch.setattr(make_samples, "CHECKPOINTS_PER_RUN", 2)
    monkeypatch.setattr(make_samples, "STEPS_BETWEEN_CHECKPOINTS", 3)
    make_samples.train_run(tmp_path / "run", optimizer_name="adamw", lr=1e-3, seed=0, fmt="ckpt")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]
    ckpt = torch.load(tmp_path / "run" / "epoch=1-step=6.ckpt", weights_only=False)  # our own file
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 1
    state = ckpt["optimizer_states"][0]
    # conv1.weight is frozen: the optimizer holds the other 3 BN × 2 + conv2 + conv3 + head × 2 = 10.
    assert len(state["param_groups"][0]["params"]) == 10
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert ckpt["state_dict"]["bn1.num_batches_tracked"].item() == 6


def test_short_run_writes_safetensors_with_step_in_name(make_samples, tmp_path, monkeypatch):
    monkeypatch.setattr(make_samples, "CHECKPOINTS_PER_RUN", 1)
    monkeypatch.setattr(make_samples, "STEPS_BETWEEN_CHECKPOINTS", 2)
    make_samples.train_run(tmp_path / "st", optimizer_name="sgd", lr=0.05, seed=1, fmt="safetensors")
    path = tmp_path / "st" / "checkpoint_000002.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert "bn3.running_var" in f.keys() and "head.weight" in f.keys()
