"""``ckptboard serve`` and the app's argv: validation at the boundary, localhost by default, ROOT confinement."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptboard.core.errors import UsageError
from ckptboard.dashboard.cli import build_parser, main
from ckptboard.dashboard.config import (
    APP_PATH,
    AppConfig,
    config_from_args,
    parse_app_args,
    parse_input_shape,
    resolve_under_root,
    streamlit_command,
)


def test_app_argv_round_trips_through_config(tmp_path):
    config = AppConfig(root=tmp_path.resolve(), cache_dir=(tmp_path / "c").resolve(), model="m.py:Net",
                       input_shape=(1, 3, 32, 32), trust=True, spectral="full")  # fmt: skip
    assert parse_app_args(config.to_argv()) == config


def test_serve_binds_localhost_unless_told(tmp_path):
    args = build_parser().parse_args(["serve", str(tmp_path)])
    command = streamlit_command(config_from_args(args), host=args.host, port=args.port)
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.port") + 1] == "8501"
    assert command[command.index("run") + 1] == str(APP_PATH)
    assert command[command.index("--") + 1:] == [str(tmp_path.resolve())]  # ROOT, resolved, after --


def test_serve_refuses_missing_root_before_starting(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 1
    assert "UsageError:" in capsys.readouterr().err


def test_serve_refuses_a_file_as_root(tmp_path, capsys):
    (tmp_path / "a.pt").write_bytes(b"x")
    assert main(["serve", str(tmp_path / "a.pt")]) == 1
    assert "is a file" in capsys.readouterr().err


def test_app_args_reject_unknown_options(tmp_path):
    with pytest.raises(UsageError, match="unknown"):
        parse_app_args([str(tmp_path), "--bogus"])
    with pytest.raises(UsageError, match="app arguments"):
        parse_app_args([])


@pytest.mark.parametrize("text, shape", [("1,3,32,32", (1, 3, 32, 32)), ("2x8", (2, 8)), (" 4 , 5 ", (4, 5))])
def test_input_shape_parses(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "a,b", "1,-3", "0"])
def test_input_shape_rejects_junk(text):
    with pytest.raises(UsageError, match="positive sizes"):
        parse_input_shape(text)


def test_paths_inside_root_resolve(tmp_path):
    (tmp_path / "run").mkdir()
    assert resolve_under_root(tmp_path, "run/model.py") == (tmp_path / "run" / "model.py").resolve()
    assert resolve_under_root(tmp_path, tmp_path / "run") == (tmp_path / "run").resolve()


@pytest.mark.parametrize("typed", ["../outside.py", "/etc/passwd", "run/../../x.py"])
def test_paths_leaving_root_are_refused(tmp_path, typed):
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    with pytest.raises(UsageError, match="outside ROOT"):
        resolve_under_root(root, typed)


def test_symlink_out_of_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.py").write_text("x = 1\n")
    (root / "link.py").symlink_to(tmp_path / "secret.py")
    with pytest.raises(UsageError, match="outside ROOT"):
        resolve_under_root(root, Path("link.py"))


def test_the_apps_first_page_imports_no_torch(tmp_path):
    # torch takes seconds to import: the app's own modules, its argv and the Overview must not need it, so that
    # the first paint waits only for pandas (reading the cache) and plotly.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import ckptboard.dashboard.state, ckptboard.dashboard.sidebar, ckptboard.dashboard.views.overview\n"
        "from ckptboard.dashboard.config import parse_app_args\n"
        "from ckptboard.core.load import load_stats\n"
        f"parse_app_args([{str(tmp_path)!r}])\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
