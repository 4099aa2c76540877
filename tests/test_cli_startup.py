"""``ckptboard --help`` and every bad-input error path answer without importing torch (nor pandas, pyarrow, numba):
each case runs in a fresh interpreter and reports what it imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_HEAVY = ("torch", "numpy", "pandas", "pyarrow", "numba", "scipy", "streamlit", "plotly")
_PROBE = (
    "import json, sys\n"
    "from ckptboard.dashboard.cli import main\n"
    "try:\n"
    "    rc = main(json.loads(sys.argv[1]))\n"
    "except SystemExit as e:\n"
    "    rc = e.code\n"
    f"heavy = sorted(m for m in {_HEAVY!r} if m in sys.modules)\n"
    "print(json.dumps({'rc': rc, 'heavy': heavy}), file=sys.stderr)\n"
)


def _run(argv: list[str]) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv)], capture_output=True, text=True,
                          timeout=120)
    *lines, last = done.stderr.strip().splitlines()
    return json.loads(last), "\n".join(lines)


@pytest.mark.parametrize("argv", [[], *([c] for c in ("inspect", "size", "flops", "summarize", "export", "serve"))])
def test_help_imports_no_heavy_library(argv):
    result, _ = _run([*argv, "--help"])
    assert result == {"rc": 0, "heavy": []}


@pytest.mark.parametrize(("argv", "message"), [
    (["inspect", "{missing}"], "UsageError: {missing}: no such file or folder"),
    (["size", "{missing}"], "NotACheckpointError: {missing}: no such file or folder"),
    (["size", "{missing}", "--depth", "-1"], "UsageError: --depth -1: must be 0"),
    (["flops"], "UsageError: give --model SPEC"),
    (["flops", "--checkpoint", "{missing}"], "NotACheckpointError: {missing}: no such file or folder"),
    (["summarize", "{missing}"], "UsageError: {missing}: not a folder"),
    (["summarize", "{tmp}", "--workers", "0"], "UsageError: --workers 0: must be at least 1"),
    (["export", "{missing}", "--out", "{tmp}/out"], "UsageError: {missing}: not a folder"),
    (["serve", "{missing}"], "UsageError: ROOT {missing}: does not exist"),
])
def test_bad_input_is_answered_in_one_line_without_heavy_imports(tmp_path, argv, message):
    fill = {"missing": str(tmp_path / "missing.pt"), "tmp": str(tmp_path)}
    result, printed = _run([a.format(**fill) for a in argv])
    assert result == {"rc": 1, "heavy": []}
    assert printed.startswith(message.format(**fill)) and len(printed.splitlines()) == 1
