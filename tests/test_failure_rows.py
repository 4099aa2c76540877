"""Every failure of a task is recorded: an exception type the reader did not anticipate gets its row in the errors
table and its failure fragment, so that a re-run serves it from the cache instead of reading the file again."""

from __future__ import annotations

import struct

from _fixtures_runs import age, write_safetensors_run

from ckptboard.core import reader
from ckptboard.core.load import load_stats
from ckptboard.core.summarize import summarize


def _deep_json_safetensors(path, depth: int = 100_000) -> None:
    """A safetensors file whose JSON header nests ``depth`` objects: Python's json parser recurses once per level."""
    header = ('{"a":' * depth + "1" + "}" * depth).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def test_a_file_that_breaks_the_reader_gets_an_error_row_and_is_not_read_again(tmp_path):
    root = tmp_path / "runs"
    write_safetensors_run(root / "run", 2)
    bad = root / "run" / "deep.safetensors"
    _deep_json_safetensors(bad)
    age(bad)

    first = summarize(root)
    assert [f.relpath for f in first.failures] == ["run/deep.safetensors"]
    errors = load_stats(root).errors
    assert errors[["checkpoint"]].values.tolist() == [["run/deep.safetensors"]]
    assert errors["error"].iloc[0] == first.failures[0].error  # the type, whatever layer named it
    assert errors["message"].iloc[0].startswith("run/deep.safetensors: ")

    again = summarize(root)
    assert (again.computed, again.cached) == (0, 3)  # 2 good checkpoints + the failure, all from the cache
    assert [(f.relpath, f.error) for f in again.failures] == [(f.relpath, f.error) for f in first.failures]


def test_an_unexpected_exception_type_is_recorded_by_its_type_and_message(tmp_path, monkeypatch):
    # A reader bug (an exception type nobody wrapped) stands in for any such surprise: it is recorded, not lost.
    root = tmp_path / "runs"
    write_safetensors_run(root / "run", 1)

    def broken_reader(path, **kwargs):
        raise struct.error("unpack requires a buffer of 8 bytes")

    monkeypatch.setattr(reader, "open_checkpoint", broken_reader)
    report = summarize(root)
    assert [(f.relpath, f.error) for f in report.failures] == [("run/step_000000.safetensors", "error")]
    row = load_stats(root).errors.iloc[0]
    assert row["error"] == "error"  # struct.error's class name
    assert "unpack requires a buffer of 8 bytes" in row["message"]

    monkeypatch.undo()
    assert summarize(root).cached == 1  # cached until the file changes
    (root / "run" / "step_000000.safetensors").touch()
    age(root / "run" / "step_000000.safetensors")
    report = summarize(root)
    assert (report.computed, report.failures) == (1, [])
