"""A short, seeded run of the mutation fuzzer (tests/fuzz/mutate.py); the long run is by hand (see its docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.fuzz importable

from tests.fuzz.mutate import OUTCOMES, case_file, fuzz  # noqa: E402


def test_mutations_are_deterministic(tmp_path):
    seeds = {"legacy": b"\x80\x02" + bytes(range(200)), "safetensors": bytes(300)}
    assert case_file(3, 17, seeds) == case_file(3, 17, seeds)
    assert case_file(3, 17, seeds) != case_file(3, 18, seeds)


def test_short_fuzz_run_finds_nothing(tmp_path, capsys):
    args = argparse.Namespace(
        cases=400, seed=20261130, first=0, batch=400, jobs=1, hang=10.0, rss_gb=1.0, show=20,
        findings=str(tmp_path / "findings.txt"),
    )  # fmt: skip
    counts = fuzz(args)
    assert sum(counts.values()) == 400 and set(counts) <= set(OUTCOMES)
    assert counts["expected"] > 200  # most mutations break the file; the reader must say so, in one error
    findings = (tmp_path / "findings.txt").read_text()
    assert (counts["unhandled"], counts["hang"], counts["crash"], counts["memory"]) == (0, 0, 0, 0), findings
