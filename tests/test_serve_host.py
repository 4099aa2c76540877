"""``ckptboard serve`` answers only to its own names: a websocket whose Host and Origin are both a foreign name (a
page on evil.example whose name was rebound to 127.0.0.1: DNS rebinding) is refused; localhost is served."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ckptboard.dashboard.config import LOCAL_HOSTS, allowed_hosts

SERVER_START_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port(tmp_path):
    """A real ``ckptboard serve`` on 127.0.0.1 over an empty ROOT; its port."""
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ckptboard.dashboard.cli", "serve", str(tmp_path), "--port",
                             str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "server not healthy"
                time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _open_stream(name: str, port: int):
    """The app's websocket as a browser on ``http://name:port`` opens it, the TCP connection going to 127.0.0.1."""
    sock = socket.create_connection(("127.0.0.1", port))
    return connect(f"ws://{name}:{port}/_stcore/stream", sock=sock, origin=f"http://{name}:{port}",
                   open_timeout=30)


def test_a_rebinding_websocket_is_refused_and_localhost_is_served(port):
    with pytest.raises(InvalidStatus) as refused:
        _open_stream("evil.example", port)
    assert refused.value.response.status_code == 403
    with _open_stream("localhost", port) as ws:  # the real page's own connection
        assert ws.protocol.state.name == "OPEN"


def test_allowed_hosts_are_localhost_the_bound_name_and_extras():
    assert allowed_hosts("127.0.0.1") == list(LOCAL_HOSTS)
    assert allowed_hosts("10.1.2.3", ("Board.Example",)) == [*LOCAL_HOSTS, "10.1.2.3", "board.example"]
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0")  # a wildcard: this machine's name
