"""``ckptboard summarize`` and ``ckptboard export`` end to end on real checkpoints: output lines, exit codes,
options refused before any file is read."""

from __future__ import annotations

import csv

import pandas as pd
from _fixtures_runs import BN_CHANNELS, age, write_lightning_run, write_safetensors_run

from ckptboard.dashboard.cli import main

N_TENSORS = 9  # TinyNet's state_dict (see tests/_fixtures_runs.py)


def _root(tmp_path, broken: bool = False):
    root = tmp_path / "runs"
    write_lightning_run(root / "lightning", 3)
    paths = write_safetensors_run(root / "safetensors", 3)
    if broken:
        data = paths[-1].read_bytes()
        bad = root / "safetensors" / "step_000006.safetensors"
        bad.write_bytes(data[: len(data) - 20])  # the header promises 20 bytes more than there are
        age(bad)
    return root


def test_summarize_prints_one_line_per_failure_and_exits_1(tmp_path, capsys):
    root = _root(tmp_path, broken=True)
    assert main(["summarize", str(root), "--workers", "1"]) == 1
    out, err = capsys.readouterr()
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1
    assert failed[0].startswith("FAILED safetensors/step_000006.safetensors: CorruptCheckpointError: ")
    assert out.startswith(f"6 checkpoints (0 from cache), {6 * N_TENSORS} tensors, ")
    assert out.rstrip().endswith(", 1 failed")

    assert main(["summarize", str(root), "--workers", "1"]) == 1  # still broken: still a failure, from the cache
    assert capsys.readouterr().out.startswith("6 checkpoints (7 from cache)")


def test_summarize_refuses_bad_options_before_reading(tmp_path, capsys):
    root = _root(tmp_path)
    assert main(["summarize", str(root), "--workers", "0"]) == 1
    assert capsys.readouterr().err.strip() == "UsageError: --workers 0: must be at least 1"
    assert main(["summarize", str(root), "--executor", "ray"]) == 1
    assert "UsageError: --executor ray: unknown; choose one of local" in capsys.readouterr().err
    assert not (root / ".ckptboard").exists()


def test_export_writes_csv_and_parquet_from_real_checkpoints(tmp_path, capsys):
    root, out = _root(tmp_path), tmp_path / "out"
    cache = tmp_path / "cache"
    assert main(["export", str(root), "--out", str(out), "--format", "csv,parquet", "--cache-dir", str(cache),
                 "--workers", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"6 checkpoints (0 from cache), {6 * N_TENSORS} tensors")
    assert lines[1] == f"wrote 19 files to {out}"  # 9 CSV + 10 Parquet (histograms too)
    stats = pd.read_csv(out / "stats.csv")
    assert len(stats) == 6 * N_TENSORS
    assert not stats["name"].str.contains("momentum").any()  # the SGD state in the .ckpt files is no row
    assert set(stats["kind"]) == {"parameter", "buffer"}
    assert len(pd.read_csv(out / "batchnorm.csv")) == 6 * BN_CHANNELS
    assert len(pd.read_csv(out / "updates.csv")) == 2 * 2 * N_TENSORS  # 2 runs × 2 checkpoints after the first
    with open(out / "errors.csv", newline="") as f:
        assert list(csv.reader(f)) == [["run", "checkpoint", "error", "message"]]
    assert len(pd.read_parquet(out / "histograms.parquet")) == 6 * N_TENSORS
    assert not (root / ".ckptboard").exists()  # --cache-dir was honoured


def test_export_refuses_an_unknown_format_before_summarising(tmp_path, capsys):
    root = _root(tmp_path)
    assert main(["export", str(root), "--out", str(tmp_path / "out"), "--format", "csv,xlsx"]) == 1
    assert "UsageError: --format xlsx: unknown" in capsys.readouterr().err
    assert not (root / ".ckptboard").exists() and not (tmp_path / "out").exists()


def test_summarize_with_a_model_spec(tmp_path, capsys):
    root = _root(tmp_path)
    spec_file = tmp_path / "net.py"
    # the model the runs were trained with, as a class defined in the spec file (what --model accepts)
    spec_file.write_text("import _fixtures_runs\n\n\nclass TinyNet(_fixtures_runs.TinyNet):\n    pass\n")
    assert main(["summarize", str(root), "--workers", "1", "--model", f"{spec_file}:TinyNet"]) == 0
    from ckptboard.core.load import load_stats

    tensors = load_stats(root).tensors
    assert set(tensors["source"]) == {"model:named_parameters", "model:named_buffers"}
    embed = tensors[tensors["name"] == "embed.weight"]
    assert set(embed["trainable"]) == {"false"}  # requires_grad=False in TinyNet


def test_summarize_refuses_a_bad_model_spec_before_reading(tmp_path, capsys):
    root = _root(tmp_path)
    assert main(["summarize", str(root), "--model", "no_such_module_here:Net"]) == 1
    assert capsys.readouterr().err.startswith("ModelSpecError: --model no_such_module_here:Net")
    assert not (root / ".ckptboard").exists()
