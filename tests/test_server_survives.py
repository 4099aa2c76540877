"""The dashboard server lives whatever a checkpoint does to the process that reads it: here a checkpoint rewritten
in place (``: > last.ckpt``, as training scripts overwrite ``last.ckpt``) while the app summarises it. Reading a
mapped file that shrinks kills its reader with SIGBUS; the app reads in a worker process, so only the worker dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch
from _fixtures_app import APP

# The app, as a real session (AppTest), in its own process: the test watches that process live.
_SERVER = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=300)
at.session_state["app_argv"] = [sys.argv[2]]
at.run()
print("exceptions:", [e.value for e in at.exception], flush=True)
at.run()  # the server still answers a rerun
print("alive", flush=True)
"""


def _readers(path: str) -> bool:
    """Whether any process has ``path`` mapped (or, for a reader that does not map, open for a while)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                if path in f.read():
                    return True
        except OSError:
            continue
    return False


def test_a_checkpoint_truncated_while_the_app_reads_it_does_not_kill_the_server(tmp_path):
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    last = root / "run" / "last.ckpt"
    g = torch.Generator().manual_seed(0)
    torch.save({"state_dict": {"w": torch.rand(64 << 20, generator=g)}}, last)  # 64 Mi fp32 = 256 MiB of data
    os.utime(last, (time.time() - 3600,) * 2)

    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(APP), str(root)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not _readers(str(last)):
            assert server.poll() is None and time.monotonic() < deadline, "the app never mapped the checkpoint"
            time.sleep(0.005)
        os.truncate(last, 0)  # rewritten in place while its tensor is being read
        out, err = server.communicate(timeout=300)
    finally:
        server.kill()
    assert server.returncode == 0, f"the server died ({server.returncode}): {err[-2000:]}"
    assert "exceptions: []" in out and "alive" in out
