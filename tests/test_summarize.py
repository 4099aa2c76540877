"""``summarize`` and ``load_stats`` on real checkpoint series: the tables, incremental re-runs, bad and growing files,
a read-only ROOT, the process pool and two concurrent processes."""

from __future__ import annotations

import pickle
import shutil
import stat
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch
from _fixtures_runs import BN_CHANNELS, TinyNet, age, write_lightning_run, write_safetensors_run
from safetensors.torch import load_file

from ckptboard.core.cache import CacheWarning, StatsCache
from ckptboard.core.errors import UsageError
from ckptboard.core.summarize import execute, plan, summarize
from ckptboard.core.task import run_task
from ckptboard.core.health import frozen_tensors, run_summary
from ckptboard.core.load import load_stats

# TinyNet's state_dict: embed.weight, fc.weight, fc.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
# bn.num_batches_tracked, head.weight.
N_TENSORS = 9
N_CKPT = 3  # per run


@pytest.fixture
def root(tmp_path):
    """Two runs of 3 checkpoints: ``lightning/`` (.ckpt dicts with SGD state) and ``safetensors/``."""
    root = tmp_path / "runs"
    write_lightning_run(root / "lightning", N_CKPT)
    write_safetensors_run(root / "safetensors", N_CKPT)
    return root


def _forbid_reads(monkeypatch) -> None:
    """Make opening any checkpoint fail loudly: a run that reads one reports it as a failure."""
    from ckptboard.core import reader

    def no_read(path, **kwargs):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(reader, "open_checkpoint", no_read)


def test_summarize_builds_every_table(root):
    report = summarize(root)
    assert (report.checkpoints, report.tensors, report.failures, report.cached) == (6, 6 * N_TENSORS, [], 0)
    tables = load_stats(root)

    assert len(tables.checkpoints) == 6
    assert sorted(tables.checkpoints["run"].unique()) == ["lightning", "safetensors"]
    assert tables.checkpoints.groupby("run")["step"].apply(list).to_dict() == {
        "lightning": [0, 2, 4], "safetensors": [0, 2, 4]}  # 2 SGD steps between checkpoints
    assert len(tables.tensors) == 6 * N_TENSORS  # optimizer state (momentum_buffer) never becomes a row
    assert not tables.tensors["name"].str.contains("momentum|optimizer").any()
    assert len(tables.histograms) == 6 * N_TENSORS
    assert len(tables.updates) == 2 * (N_CKPT - 1) * N_TENSORS  # every checkpoint but the first of each run
    assert len(tables.batchnorm) == 6 * BN_CHANNELS
    assert tables.events.empty and tables.errors.empty

    # The numbers are those of the tensors in the files.
    last = root / "safetensors" / "step_000004.safetensors"
    state = load_file(last)
    row = tables.tensors.set_index(["checkpoint", "name"]).loc[("safetensors/step_000004.safetensors", "fc.bias")]
    assert row["numel"] == BN_CHANNELS and row["shape"] == "[3]"
    assert row["mean"] == pytest.approx(state["fc.bias"].double().mean().item(), rel=1e-6)
    assert row["norm"] == pytest.approx(state["fc.bias"].double().norm().item(), rel=1e-6)
    bn = tables.batchnorm[tables.batchnorm["checkpoint"] == "safetensors/step_000004.safetensors"]
    assert bn["running_var"].tolist() == pytest.approx(state["bn.running_var"].double().tolist())
    assert bn["channel"].tolist() == [0, 1, 2]

    prev = load_file(root / "safetensors" / "step_000002.safetensors")
    update = tables.updates.set_index(["checkpoint", "name"]).loc[("safetensors/step_000004.safetensors",
                                                                  "head.weight")]
    assert update["prev_checkpoint"] == "safetensors/step_000002.safetensors" and update["prev_step"] == 2
    expected = (state["head.weight"].double() - prev["head.weight"].double()).norm().item()  # ‖W_4 − W_2‖
    assert update["update_norm"] == pytest.approx(expected, rel=1e-6)

    # The embedding is frozen: identical across both runs, and the only tensor that is.
    frozen = frozen_tensors(tables)
    assert frozen[["run", "name", "n_updates"]].values.tolist() == [
        ["lightning", "embed.weight", 2], ["safetensors", "embed.weight", 2]]
    assert run_summary(tables)[["run", "checkpoints", "failed", "last_step"]].values.tolist() == [
        ["lightning", 3, 0, 4], ["safetensors", 3, 0, 4]]


def test_second_summarize_reads_no_checkpoint(root, monkeypatch):
    summarize(root)
    before = load_stats(root)
    _forbid_reads(monkeypatch)
    report = summarize(root)
    assert (report.cached, report.computed, report.failures, report.checkpoints) == (6, 0, [], 6)
    pd.testing.assert_frame_equal(load_stats(root).tensors, before.tensors)


def test_only_changed_and_dependent_checkpoints_are_work(root):
    summarize(root)
    # Deleting the middle checkpoint changes the previous checkpoint of the last one: its updates are recomputed.
    (root / "lightning" / "epoch=1-step=2.ckpt").unlink()
    assert len(load_stats(root).checkpoints) == 5  # before any summarize: a deleted checkpoint's fragment is left out
    report = summarize(root)
    assert (report.cached, report.computed) == (4, 1)
    tables = load_stats(root)
    assert len(tables.checkpoints) == 5
    assert len(StatsCache(root).fragments()) == 5  # the deleted checkpoint's fragment was pruned
    last = tables.updates[tables.updates["checkpoint"] == "lightning/epoch=2-step=4.ckpt"]
    assert set(last["prev_checkpoint"]) == {"lightning/epoch=0-step=0.ckpt"}


def test_a_new_checkpoint_adds_events_for_added_removed_and_reshaped_tensors(root):
    state = load_file(root / "safetensors" / "step_000004.safetensors")
    state["extra.weight"] = torch.ones(2, 2)
    state["head.weight"] = torch.zeros(2, 4)  # was [2, 3]
    del state["fc.bias"]
    path = root / "safetensors" / "step_000006.safetensors"
    from safetensors.torch import save_file

    save_file(state, path)
    age(path, 60)
    summarize(root)
    events = load_stats(root).events
    assert events[["checkpoint", "name", "event", "detail"]].sort_values("name").values.tolist() == [
        ["safetensors/step_000006.safetensors", "extra.weight", "added", "[2, 2] float32"],
        ["safetensors/step_000006.safetensors", "fc.bias", "removed", "[3] float32"],
        ["safetensors/step_000006.safetensors", "head.weight", "reshaped", "[2, 3] -> [2, 4]"],
    ]


def test_corrupt_fragments_are_recomputed_with_one_warning(root):
    summarize(root)
    cache = StatsCache(root)
    for path in cache.fragments()[:2]:
        path.write_bytes(path.read_bytes()[:50])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = summarize(root)
    cache_warnings = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(cache_warnings) == 1
    assert "2 stats cache fragment(s) were unreadable or of another format version" in str(cache_warnings[0].message)
    assert (report.computed, report.cached, report.failures) == (2, 4, [])


def _truncated_copy(good, path) -> None:
    """``good`` (a safetensors file) cut in the middle of its tensor data: the header still lists every tensor."""
    data = good.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    path.write_bytes(data[: start + (len(data) - start) // 2])


def test_old_truncated_checkpoint_is_a_cached_failure(root, monkeypatch):
    broken = root / "safetensors" / "step_000006.safetensors"
    _truncated_copy(root / "safetensors" / "step_000004.safetensors", broken)
    age(broken, 60)
    report = summarize(root)
    assert [f.relpath for f in report.failures] == ["safetensors/step_000006.safetensors"]
    assert report.failures[0].error == "CorruptCheckpointError"
    assert report.checkpoints == 6
    errors = load_stats(root).errors
    assert errors[["run", "checkpoint", "error"]].values.tolist() == [
        ["safetensors", "safetensors/step_000006.safetensors", "CorruptCheckpointError"]]
    assert errors["message"][0].startswith("safetensors/step_000006.safetensors: ")

    _forbid_reads(monkeypatch)
    again = summarize(root)  # the failure comes from the cache: the file is not read again
    assert (again.computed, [f.relpath for f in again.failures]) == (0, ["safetensors/step_000006.safetensors"])


def test_checkpoint_being_written_is_skipped_then_picked_up(root):
    good = root / "safetensors" / "step_000004.safetensors"
    growing = root / "safetensors" / "step_000006.safetensors"
    _truncated_copy(good, growing)  # fresh mtime: a training job is still writing it
    report = summarize(root)
    assert report.skipped_incomplete == ["safetensors/step_000006.safetensors"]
    assert report.failures == [] and report.checkpoints == 6
    assert not StatsCache(root).fragment_path("safetensors/step_000006.safetensors").exists()

    shutil.copyfile(good, growing)  # the job finished writing
    age(growing, 30)
    report = summarize(root)
    assert (report.computed, report.skipped_incomplete, report.checkpoints) == (1, [], 7)


def test_checkpoint_growing_between_listing_and_reading_is_skipped(root):
    work = plan(root)
    target = root / "safetensors" / "step_000002.safetensors"
    with open(target, "ab") as f:
        f.write(b"more bytes")  # still being appended to after summarize listed it
    report = execute(work)
    assert report.skipped_incomplete == ["safetensors/step_000002.safetensors"]
    assert report.failures == []


def test_read_only_root_with_cache_dir_elsewhere(root, tmp_path):
    listing = sorted(str(p) for p in root.rglob("*"))
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        report = summarize(root, cache_dir=tmp_path / "cache")
        assert (report.checkpoints, report.failures) == (6, [])
        assert len(load_stats(root, cache_dir=tmp_path / "cache").tensors) == 6 * N_TENSORS
        assert sorted(str(p) for p in root.rglob("*")) == listing  # nothing written under ROOT
    finally:
        for folder in folders:
            folder.chmod(stat.S_IRWXU)


def test_two_concurrent_processes_leave_a_correct_cache(root, tmp_path):
    summarize(root, cache_dir=tmp_path / "reference")
    command = [sys.executable, "-m", "ckptboard.dashboard.cli", "summarize", str(root), "--workers", "1"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    tables, reference = load_stats(root), load_stats(root, cache_dir=tmp_path / "reference")
    assert len(StatsCache(root).fragments()) == 6
    for name in ("tensors", "histograms", "updates", "batchnorm"):
        pd.testing.assert_frame_equal(getattr(tables, name), getattr(reference, name))
    report = summarize(root)
    assert (report.cached, report.computed) == (6, 0)


def test_tasks_and_receipts_travel_by_pickle(root):
    # What a process pool or a Dask worker does with a task: unpickle it, run it, pickle the receipt back.
    task = plan(root).tasks[1]
    receipt = pickle.loads(pickle.dumps(run_task(pickle.loads(pickle.dumps(task)))))
    assert (receipt.relpath, receipt.status, receipt.error, receipt.tensors) == (task.relpath, "ok", "", N_TENSORS)
    assert StatsCache(root).lookup(task.relpath, task.key).hit


def test_a_model_changes_the_key_and_the_classification(root):
    summarize(root)
    model = TinyNet()
    report = summarize(root, model=model)
    assert (report.computed, report.cached) == (6, 0)
    tensors = load_stats(root).tensors
    embed = tensors[tensors["name"] == "embed.weight"]
    assert set(embed["trainable"]) == {"false"} and set(embed["kind"]) == {"parameter"}
    assert summarize(root, model=model).cached == 6


def test_summarize_rejects_a_missing_root_and_a_bad_device(tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        summarize(tmp_path / "missing")
    with pytest.raises(UsageError, match="device 'tpu' is not a torch device"):
        summarize(tmp_path, device="tpu")



def test_legacy_and_hugging_face_folders_are_summarised(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    root = tmp_path / "runs"
    states = [TinyNet().state_dict() for _ in range(2)]  # two random inits: a run of two checkpoints
    (root / "legacy").mkdir(parents=True)
    for i, state in enumerate(states):
        torch.save(state, root / "legacy" / f"step_{i}.pt", _use_new_zipfile_serialization=False)
        folder = root / "hf" / f"checkpoint-{i}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    report = summarize(root)
    assert (report.checkpoints, report.tensors, report.failures) == (4, 4 * N_TENSORS, [])
    tables = load_stats(root)
    assert tables.checkpoints[["checkpoint", "format"]].values.tolist() == [
        ["hf/checkpoint-0", "hf-sharded"], ["hf/checkpoint-1", "hf-sharded"],
        ["legacy/step_0.pt", "torch-legacy"], ["legacy/step_1.pt", "torch-legacy"]]
    assert len(tables.updates) == 2 * N_TENSORS  # one pair of consecutive checkpoints per run
    assert summarize(root).cached == 4


def test_pickled_module_needs_trust_then_is_read(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    torch.save(TinyNet(), root / "model.pt")  # the whole module: unpickling it runs code
    age(root / "model.pt")
    report = summarize(root)
    assert [(f.relpath, f.error) for f in report.failures] == [("model.pt", "UnsafeCheckpointError")]
    assert "--trust" in report.failures[0].message
    report = summarize(root, trust=True)  # the cached refusal does not stand once trust is given
    assert (report.computed, report.checkpoints, report.failures) == (1, 1, [])
    assert len(load_stats(root).tensors) == N_TENSORS


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_summary_equals_the_cpu_summary(root, tmp_path):
    summarize(root, cache_dir=tmp_path / "cpu")
    report = summarize(root, cache_dir=tmp_path / "cuda", device="cuda")
    assert (report.checkpoints, report.failures) == (6, [])
    cpu, cuda = load_stats(root, cache_dir=tmp_path / "cpu"), load_stats(root, cache_dir=tmp_path / "cuda")
    for name in ("tensors", "updates", "batchnorm"):
        pd.testing.assert_frame_equal(getattr(cuda, name), getattr(cpu, name), check_exact=False, rtol=1e-5)
