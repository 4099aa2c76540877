"""Worker limits: a checkpoint past the memory or time limit, or one that kills its worker, ends as a recorded
failure row (cached until the file changes); the other checkpoints are summarised and the calling process lives."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import zipfile

import pytest
import torch
from _fixtures_procs import holders
from _fixtures_runs import age, write_safetensors_run
from safetensors.torch import save_file

from ckptboard.core.executors import LocalExecutor
from ckptboard.core.limits import DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT_S, WorkerLimits, parse_size
from ckptboard.core.load import load_stats
from ckptboard.core.summarize import summarize
from ckptboard.core.task import run_task
from ckptboard.dashboard.cli import main

MANY = 20_000  # tensors in the "many" checkpoint: ~3,500 tensors/s make it ~6 s, 10x the test's 0.5 s limit


@pytest.fixture
def root(tmp_path):
    """``run/``: two small safetensors checkpoints and ``many.safetensors`` (20,000 two-element tensors, ~1.6 MB)."""
    root = tmp_path / "runs"
    write_safetensors_run(root / "run", 2)
    many = root / "run" / "many.safetensors"
    save_file({f"layer{i}.weight": torch.full((2,), float(i)) for i in range(MANY)}, many)
    age(many)
    return root


def _errors(root) -> dict[str, tuple[str, str]]:
    errors = load_stats(root).errors
    return {row.checkpoint: (row.error, row.message) for row in errors.itertuples()}


def _deflated_checkpoint(path) -> None:
    """A real ``torch.save`` file (28 MiB of zeros) re-zipped with deflate, as archive tools do: 30 kB on disk, its
    storage inflates to 28 MiB in memory when read (within the reader's own inflation bound of 32 MiB)."""
    plain = path.with_suffix(".plain")
    torch.save({"state_dict": {"w": torch.zeros(7 << 20)}}, plain)  # 7 Mi fp32 = 28 MiB
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    plain.unlink()
    age(path)


def test_a_checkpoint_past_the_memory_limit_is_a_recorded_resource_limit_error(tmp_path):
    root = tmp_path / "runs"
    write_safetensors_run(root / "run", 2)
    _deflated_checkpoint(root / "run" / "deflated.pt")
    # 8 MiB beyond the worker's start and the files: the small checkpoints fit, 28 MiB inflated does not. Run as a
    # user runs it, in a fresh process: a worker forked from this long-lived test process inherits the heap that
    # earlier tests freed, where 28 MiB fits without growing the address space that RLIMIT_AS counts.
    done = subprocess.run([sys.executable, "-m", "ckptboard.dashboard.cli", "summarize", str(root),
                           "--max-memory", "8M", "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    out, err = done.stdout, done.stderr
    assert err.count("FAILED") == 1
    assert re.search(r"FAILED run/deflated.pt: ResourceLimitError: needed more than 8.0\d MiB", err)  # 8 MiB + 30 kB
    assert out.startswith("2 checkpoints")
    assert _errors(root)["run/deflated.pt"][0] == "ResourceLimitError"

    again = summarize(root)  # in this process, no limit: the recorded failure is served until the file changes
    assert (again.computed, again.cached) == (0, 3)
    same = summarize(root, limits=WorkerLimits(8 << 20))  # the same limits: not read again
    assert (same.computed, same.cached) == (0, 3)
    assert main(["summarize", str(root)]) == 0  # the default limit (2 GiB) is larger: read again, and it fits
    assert "run/deflated.pt" not in _errors(root)


def test_a_checkpoint_past_the_time_limit_is_killed_and_recorded(root, capsys):
    # Half a second: the 20,000-tensor checkpoint takes seconds; the worker is killed, not waited for.
    assert main(["summarize", str(root), "--timeout", "0.5", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "FAILED run/many.safetensors: ResourceLimitError: took longer than 0.5 s" in err
    error, message = _errors(root)["run/many.safetensors"]
    assert error == "ResourceLimitError" and "a run with a larger --timeout reads it again" in message
    assert not holders(root / "run" / "many.safetensors")  # its worker was killed, not left running

    # A timeout may be the machine's (a loaded host), not the file's: the same limit serves the recorded failure,
    # a larger one reads the file again.
    assert main(["summarize", str(root), "--timeout", "0.5", "--workers", "2"]) == 1
    assert capsys.readouterr().out.startswith("2 checkpoints (3 from cache)")  # 2 read + 1 failed, none read again
    assert _errors(root)["run/many.safetensors"][0] == "ResourceLimitError"
    assert main(["summarize", str(root), "--timeout", "600", "--workers", "2"]) == 0
    assert "run/many.safetensors" not in _errors(root)


def _dies_on_many(task):
    """``run_task``, except that a worker given ``many.safetensors`` is killed as the OOM killer would kill it."""
    if task.relpath.endswith("many.safetensors"):
        os.kill(os.getpid(), signal.SIGKILL)
    return run_task(task)


class _KillingExecutor(LocalExecutor):
    def map_unordered(self, fn, tasks):
        return super().map_unordered(_dies_on_many, tasks)


def test_a_checkpoint_that_kills_its_worker_twice_is_recorded_and_the_rest_summarised(root):
    report = summarize(root, executor=_KillingExecutor(2, isolate=True))
    assert [(f.relpath, f.error) for f in report.failures] == [("run/many.safetensors", "WorkerLost")]
    assert report.failures[0].message == "worker process died twice (killed by SIGKILL)"
    assert report.checkpoints == 2
    assert _errors(root)["run/many.safetensors"] == (
        "WorkerLost", "run/many.safetensors: worker process died twice (killed by SIGKILL)")
    again = summarize(root, executor=_KillingExecutor(2, isolate=True))  # not read again: no worker dies
    assert (again.computed, again.cached) == (0, 3)


def test_a_single_isolated_worker_keeps_the_calling_process_alive(root):
    report = summarize(root, executor=_KillingExecutor(1, isolate=True))
    assert [f.relpath for f in report.failures] == ["run/many.safetensors"] and report.checkpoints == 2


def test_limits_come_from_options_then_environment_then_defaults(monkeypatch):
    monkeypatch.delenv("CKPTBOARD_MAX_MEMORY", raising=False)
    monkeypatch.delenv("CKPTBOARD_TIMEOUT", raising=False)
    assert WorkerLimits.from_options() == WorkerLimits(DEFAULT_MAX_MEMORY, None)
    assert WorkerLimits.from_options().seconds_for(2_000_000_000) == DEFAULT_TIMEOUT_S + 100  # 2 GB / 20 MB/s
    monkeypatch.setenv("CKPTBOARD_MAX_MEMORY", "512M")
    monkeypatch.setenv("CKPTBOARD_TIMEOUT", "30")
    assert WorkerLimits.from_options() == WorkerLimits(512 << 20, 30.0)
    assert WorkerLimits.from_options("4G", "0") == WorkerLimits(4 << 30, 0.0)
    assert WorkerLimits.from_options("0", "0").seconds_for(10**12) is None  # 0: no limit
    assert WorkerLimits.from_options("0").max_memory is None


@pytest.mark.parametrize("text, size", [("1073741824", 1 << 30), ("2G", 2 << 30), ("512m", 512 << 20),
                                        ("1.5GiB", 3 << 29), ("64K", 64 << 10)])
def test_sizes_parse_in_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("argv, problem", [(["--max-memory", "lots"], "--max-memory 'lots': expected a size"),
                                           (["--timeout", "-1"], "--timeout '-1': expected seconds")])
def test_bad_limits_are_one_usage_line_before_any_file_is_read(tmp_path, capsys, argv, problem):
    assert main(["summarize", str(tmp_path), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"UsageError: {problem}") and err.count("\n") == 1
    assert not (tmp_path / ".ckptboard").exists()


def test_larger_limits_are_those_that_allow_more_memory_or_time():
    recorded = WorkerLimits(8 << 20, 0.5).record()
    assert not WorkerLimits(8 << 20, 0.5).allow_more_than(recorded, 10**6)
    assert not WorkerLimits(4 << 20, 0.25).allow_more_than(recorded, 10**6)
    assert WorkerLimits(16 << 20, 0.5).allow_more_than(recorded, 10**6)
    assert WorkerLimits(None, 0.5).allow_more_than(recorded, 10**6)  # None: no memory limit
    assert WorkerLimits(8 << 20, 0.0).allow_more_than(recorded, 10**6)  # 0: no time limit
    assert WorkerLimits(8 << 20, None).allow_more_than(recorded, 10**6)  # the default: 120 s + 1 MB / 20 MB/s
    unlimited = WorkerLimits(None, 0.0).record()
    assert not WorkerLimits().allow_more_than(unlimited, 10**6)  # nothing allows more than no limit
