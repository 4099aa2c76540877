"""The README opens with the two set-up commands, and CI runs the second one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_serve_and_test_commands():
    blocks = _code_blocks((ROOT / "README.md").read_text())
    serve, test = blocks[0], blocks[1]
    assert "torch==2.13.0" in serve and "ckptboard serve sample_ckpts" in serve
    assert "[test]" in test and "pytest" in test


def test_ci_runs_the_readme_test_command():
    test_command = _code_blocks((ROOT / "README.md").read_text())[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_ci_installs_cpu_torch_before_the_project():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("pip install -q torch==2.13.0") < ci.index(_code_blocks((ROOT / "README.md").read_text())[1])
