"""The wheel holds one namespace, ``ckptboard``, with every module of core/ and dashboard/ (no bare ``core``)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_core_and_dashboard_under_ckptboard(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                                 ".ckptboard", "sample_ckpts", "tests", "benchmarks"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("ckptboard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"ckptboard", wheel.name.split("-py")[0] + ".dist-info"}
    # Every source module of the two folders is packaged (a subpackage missing from pyproject would drop out).
    for folder, package in [("core", "ckptboard/core"), ("dashboard", "ckptboard/dashboard")]:
        for source in (ROOT / folder).rglob("*.py"):
            assert f"{package}/{source.relative_to(ROOT / folder).as_posix()}" in names, source
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "ckptboard = ckptboard.dashboard.cli:main" in entry_points
