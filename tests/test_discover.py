"""Discovery: every folder holding checkpoints is a run; other files and hidden folders are ignored."""

from __future__ import annotations

import os

import pytest
import torch
from _fixtures_ckpt import save, write_hf_folder
from safetensors.torch import save_file

from ckptboard.core.discover import discover
from ckptboard.core.errors import UsageError


def _touch_mtime(path, seconds):
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def test_runs_and_ordering(tmp_path):
    sd = {"w": torch.ones(2)}
    save(sd, tmp_path / "root.pt")
    run = tmp_path / "lr_0.1"
    run.mkdir()
    for name, mtime in [("epoch=0-step=20.ckpt", 3), ("epoch=1-step=10.ckpt", 5), ("last.ckpt", 1), ("epoch=2-step=30.ckpt", 2)]:
        _touch_mtime(save(sd, run / name), mtime)
    (run / "notes.txt").write_text("not a checkpoint")
    (run / "metrics.json").write_text('{"loss": 1}')
    (run / "empty.pt").write_bytes(b"")
    nested = tmp_path / "sweeps" / "b"
    nested.mkdir(parents=True)
    save_file(sd, nested / "model_step_5.safetensors")
    hidden = tmp_path / ".ckptboard"
    hidden.mkdir()
    save(sd, hidden / "cache.pt")

    runs = discover(tmp_path)
    assert [r.name for r in runs] == [".", "lr_0.1", "sweeps/b"]
    names = [c.relpath for c in runs[1].checkpoints]
    # step 10, 20, 30 from the names; last.ckpt has no step and comes after them
    assert names == ["lr_0.1/epoch=1-step=10.ckpt", "lr_0.1/epoch=0-step=20.ckpt", "lr_0.1/epoch=2-step=30.ckpt", "lr_0.1/last.ckpt"]
    assert [c.step_hint for c in runs[1].checkpoints] == [10, 20, 30, None]
    assert runs[1].checkpoints[0].mtime_ns == 5 * 10**9
    assert runs[1].checkpoints[0].size == (run / "epoch=1-step=10.ckpt").stat().st_size
    assert runs[2].checkpoints[0].step_hint == 5


def test_same_step_orders_by_mtime(tmp_path):
    for name, mtime in [("b_ep1.pt", 9), ("a_ep1.pt", 4)]:
        _touch_mtime(save({"w": torch.ones(1)}, tmp_path / name), mtime)
    assert [c.relpath for c in discover(tmp_path)[0].checkpoints] == ["a_ep1.pt", "b_ep1.pt"]


def test_hf_folder_is_one_checkpoint_of_its_parent_run(tmp_path):
    run = tmp_path / "hf_run"
    for step in (500, 1000):
        write_hf_folder(run / f"checkpoint-{step}", {"a": torch.ones(3), "b": torch.zeros(2)}, shards=2)
    runs = discover(tmp_path)
    assert [r.name for r in runs] == ["hf_run"]
    first = runs[0].checkpoints[0]
    assert [c.relpath for c in runs[0].checkpoints] == ["hf_run/checkpoint-500", "hf_run/checkpoint-1000"]
    assert first.step_hint == 500
    folder = run / "checkpoint-500"
    assert first.size == sum(f.stat().st_size for f in folder.iterdir())  # index + 2 shards
    assert first.mtime_ns == max(f.stat().st_mtime_ns for f in folder.iterdir())


def test_foreign_zip_and_plain_pickle_are_ignored(tmp_path):
    import pickle
    import zipfile

    with zipfile.ZipFile(tmp_path / "data.zip", "w") as zf:
        zf.writestr("a.txt", "hello")
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert discover(tmp_path) == []


def test_missing_root_and_single_file(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        discover(tmp_path / "nope")
    path = save({"w": torch.ones(1)}, tmp_path / "step_7.pt")
    (run,) = discover(path)
    assert run.name == "." and [c.relpath for c in run.checkpoints] == ["step_7.pt"]


def test_damaged_zip_is_kept_so_that_opening_reports_it(tmp_path):
    path = save({"w": torch.ones(100)}, tmp_path / "step_3.pt")
    path.write_bytes(path.read_bytes()[:200])  # a crashed or half-written save
    assert [c.relpath for c in discover(tmp_path)[0].checkpoints] == ["step_3.pt"]
