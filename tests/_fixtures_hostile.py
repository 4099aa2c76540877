"""Hostile checkpoints: hand-written pickle opcodes inside real ``torch.save`` archives, and a subprocess runner.

The archives are real ``torch.save`` zips (written by torch, so their layout is torch's); only ``data.pkl`` (or one
storage record) is replaced, the way an attacker edits a downloaded checkpoint.
"""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

_GOOD_STATE = {"w": torch.arange(4, dtype=torch.float32)}


def op_global(module: str, name: str) -> bytes:
    """GLOBAL opcode: ``module.name`` pushed through the unpickler's find_class."""
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def pickled(value: object) -> bytes:
    """The opcodes that push ``value`` (protocol 2, no PROTO header, no STOP; memo indices from 0)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def long_binput(index: int) -> bytes:
    return pickle.LONG_BINPUT + index.to_bytes(4, "little")


def long_binget(index: int) -> bytes:
    return pickle.LONG_BINGET + index.to_bytes(4, "little")


def torch_zip(path: Path, data_pkl: bytes, compress: int = zipfile.ZIP_STORED, state: dict | None = None) -> Path:
    """A ``torch.save`` archive of ``state`` whose ``data.pkl`` is replaced by ``data_pkl`` (stored or deflated)."""
    real = path.with_suffix(".real")
    torch.save(state if state is not None else _GOOD_STATE, real)
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = data_pkl if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, data, compress_type=compress if info.filename.endswith("/data.pkl") else 0)
    real.unlink()
    return path


def billion_laughs(width: int = 40, depth: int = 9) -> bytes:
    """A list of ``width`` references to a list of ``width`` references … ``depth`` levels (a few KB of opcodes)."""
    out = [pickle.PROTO + b"\x02", pickle.EMPTY_LIST, long_binput(0)]
    for level in range(1, depth + 1):
        out += [pickle.MARK, long_binget(level - 1) * width, pickle.LIST, long_binput(level)]
    return b"".join(out) + pickle.STOP


_RUNNER = r"""
import resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from ckptboard.core.errors import CkptboardError
from ckptboard.core.reader import open_checkpoint
try:
    with open_checkpoint(sys.argv[1]) as ckpt:
        for info in ckpt.tensors:
            ckpt.load(info)
    print("OK")
except CkptboardError as e:
    print(f"{type(e).__name__}: {e}")
"""


def open_in_subprocess(path: Path, memory: int = 3 << 29, timeout: float = 60) -> tuple[str, int]:
    """Open and load every tensor of ``path`` in a fresh process limited to ``memory`` bytes of address space.

    Returns ``(last line printed, peak RSS of the child in KiB)``; a hang fails the calling test by timeout.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(path), str(memory)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines = (done.stdout + done.stderr).strip().splitlines()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (lines[-1] if lines else f"exit {done.returncode}"), max(peak, before)
