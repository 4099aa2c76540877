"""The CLI's help as a user expects it: ``--version``, examples, a description for ``serve``, and ``flops`` saying
what it needs; ``streamlit run dashboard/app.py`` gets serve's safe defaults from the config beside the app."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib

import pytest

from ckptboard.dashboard.cli import build_parser, main
from ckptboard.dashboard.config import APP_PATH, config_from_args, streamlit_command

APP_CONFIG = APP_PATH.parent / ".streamlit" / "config.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_version_prints_the_distribution_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"ckptboard {version('ckptboard')}"


def test_top_level_help_shows_examples():
    text = build_parser().format_help()
    assert "examples:" in text
    for command in ("serve", "inspect", "size", "flops", "summarize", "export"):
        assert f"  ckptboard {command} " in text, command


def _subparser(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


def test_serve_has_a_description_saying_where_it_binds():
    text = _subparser("serve").format_help()
    assert "127.0.0.1" in text and "usage statistics" in text


def test_flops_help_says_model_or_checkpoint_is_required():
    text = _subparser("flops").format_help()
    assert "Needs --model (with --input-shape) or --checkpoint" in text
    assert "required unless --checkpoint is given" in " ".join(text.split())


def test_serve_hides_streamlits_own_url_banner(tmp_path):
    # serve prints its one URL; Streamlit's "Local URL / Network URL" banner would be a second.
    command = streamlit_command(config_from_args(build_parser().parse_args(["serve", str(tmp_path)])),
                                host="127.0.0.1", port=8501)  # fmt: skip
    assert command[command.index("--logger.hideWelcomeMessage") + 1] == "true"


def test_app_config_beside_the_app_has_serves_defaults():
    config = tomllib.loads(APP_CONFIG.read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["allowedHosts"] == ["localhost", "127.0.0.1", "::1"]


def test_streamlit_run_from_elsewhere_binds_localhost(tmp_path):
    """Streamlit reads ``.streamlit/config.toml`` beside the main script whatever the working directory: the
    banner it prints names the one bound address (``URL:``), not ``Local URL``/``Network URL`` (all interfaces)."""
    port = free_port()
    log = tmp_path / "streamlit.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP_PATH), "--server.port", str(port), "--", str(tmp_path)],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "HOME": str(tmp_path)},  # no ~/.streamlit/config.toml of the user's
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "URL:" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        text = log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    assert f"URL: http://127.0.0.1:{port}" in text, text
    assert "Network URL" not in text, text
