"""The dashboard server lives whatever a checkpoint does to the process that reads it: here a checkpoint rewritten
in place (``: > last.ckpt``, as training scripts overwrite ``last.ckpt``) while the app summarises it. A reader that
maps the file dies of SIGBUS (before issue 10 the app read in its own process and died with it); the app reads in a
worker process, so at worst only the worker dies, and the file is read again once it is written."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch
from _fixtures_app import APP
from _fixtures_procs import holders

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
        while not holders(last):
            assert server.poll() is None and time.monotonic() < deadline, "the app never opened the checkpoint"
            time.sleep(0.005)
        os.truncate(last, 0)  # rewritten in place while its tensor is being read
        out, err = server.communicate(timeout=300)
    finally:
        server.kill()
    assert server.returncode == 0, f"the server died ({server.returncode}): {err[-2000:]}"
    assert "exceptions: []" in out and "alive" in out
