"""The tabular export: --format parsing at the boundary, the CSV/Parquet files and their exact columns."""

from __future__ import annotations

import csv

import pandas as pd
import pytest
from _fixtures_tables import synthetic_tables

from ckptboard.core.errors import UsageError
from ckptboard.dashboard import export_tables as export
from ckptboard.dashboard.export_tables import ExportFormat, export_tables, parse_formats

# The CSV contract other tools parse: pinned here literally, so that a change of core/schema.py shows up as a diff.
_PERCENTILES = ["p0", "p1", "p5", "p6_68", "p15_87", "p25", "p30_85", "p50", "p69_15", "p75", "p84_13", "p93_32",
                "p95", "p99", "p100"]
EXPECTED_HEADERS = {
    "stats.csv": ["run", "checkpoint", "step", "group", "name", "raw_name", "module", "kind", "trainable", "source",
                  "dtype", "shape", "numel", "nbytes", "tied_to", "mean", "std", "min", "max", "abs_mean", "norm",
                  "zeros", "nans", "posinfs", "neginfs", "infs", *_PERCENTILES],
    "updates.csv": ["run", "checkpoint", "step", "prev_checkpoint", "prev_step", "group", "name", "module", "kind",
                    "update_norm", "update_ratio", "cosine", "dist_from_first", "rel_dist_from_first"],
    "batchnorm.csv": ["run", "checkpoint", "step", "group", "module", "channel", "running_mean", "running_var"],
    "events.csv": ["run", "checkpoint", "step", "group", "name", "event", "detail"],
    "checkpoints.csv": ["run", "checkpoint", "step", "step_source", "format", "size_bytes", "mtime", "n_tensors",
                        "n_parameters", "n_trainable", "n_frozen", "n_buffers", "parameter_bytes", "buffer_bytes",
                        "optimizer", "metadata_json", "skipped_globals"],
    "errors.csv": ["run", "checkpoint", "error", "message"],
    "training_scalars.csv": ["run", "checkpoint", "step", "source", "name", "value"],
    "spectral.csv": ["run", "checkpoint", "step", "group", "name", "module", "method", "n_matrices", "rows", "cols",
                     "sigma_max", "stable_rank", "iterations", "n_evals", "alpha", "alpha_xmin", "alpha_ks",
                     "alpha_sigma", "alpha_n", "alpha_band"],
    "gradients.csv": ["run", "checkpoint", "step", "optimizer", "param_id", "param_group", "group", "name", "module",
                      "moments", "opt_step", "lr", "numel", "grad_rms", "grad_rms_max", "m_norm", "update_norm",
                      "update_rms", "weight_norm", "update_ratio"],
}


def _header(path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def test_parse_formats_keeps_order_and_drops_duplicates():
    assert parse_formats("parquet, CSV,csv") == (ExportFormat.PARQUET, ExportFormat.CSV)


@pytest.mark.parametrize("text, message", [
    ("xlsx", "--format xlsx: unknown; choose from csv, parquet, html, png, tensorboard"),
    (" , ", "--format: give at least one of csv"),
])
def test_parse_formats_rejects_bad_input(text, message):
    with pytest.raises(UsageError, match=message):
        parse_formats(text)


def test_formats_have_exactly_one_writer_each():
    with pytest.raises(ValueError, match="export format csv already has a writer"):
        export._writer(ExportFormat.CSV)(lambda *a: [])


def test_csv_export_writes_every_table_with_the_pinned_columns(tmp_path):
    tables = synthetic_tables(n_checkpoints=3, n_tensors=10, runs=1, seed=0)
    written = export_tables(tables, tmp_path / "out", ["csv"])
    assert sorted(p.name for p in written) == sorted(EXPECTED_HEADERS)
    for name, header in EXPECTED_HEADERS.items():
        assert _header(tmp_path / "out" / name) == header, name
    stats = pd.read_csv(tmp_path / "out" / "stats.csv")
    assert len(stats) == len(tables.tensors)
    assert not (tmp_path / "out" / "histograms.csv").exists()  # lists per row: parquet only


def test_parquet_export_adds_histograms(tmp_path):
    tables = synthetic_tables(n_checkpoints=2, n_tensors=6, runs=1, seed=1)
    progress = []
    written = export_tables(tables, tmp_path, ["parquet"], progress=lambda done, total, what: progress.append(done))
    assert {p.name for p in written} == {n.replace(".csv", ".parquet") for n in EXPECTED_HEADERS} | {
        "histograms.parquet"}
    assert progress == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # one call per file, 10 tables
    histograms = pd.read_parquet(tmp_path / "histograms.parquet")
    assert list(histograms.columns) == ["run", "checkpoint", "step", "group", "name", "lo", "hi", "counts"]
    assert len(histograms) == len(tables.histograms)
    gradients = pd.read_parquet(tmp_path / "gradients.parquet")
    assert list(gradients.columns)[-3:] == ["lo", "hi", "counts"]  # the sqrt(v_hat) histograms: Parquet only


def test_export_into_a_file_path_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(UsageError, match="cannot create the folder"):
        export_tables(synthetic_tables(2, 6, 1), blocker / "out", ["csv"])
