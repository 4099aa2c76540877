"""Where a GPU statistics pass can get its bytes from: mmap vs pread into (pinned) buffers (run by hand on a GPU box).

Writes one ``--gb`` GB file of float32, reads it once (page cache warm), then times, medians of ``--repeat``:
``mmap_copy_1`` (a private np.memmap copied chunk by chunk into a reused buffer: what staging does today), ``pread_1`` (readinto one reused 64 MiB
buffer), ``pread_N`` (N threads, each its own buffer and range), ``pinned_h2d_1``/``pinned_h2d_N`` (readinto pinned
buffers, then a non-blocking copy to the GPU). Prints GB/s as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

CHUNK = 64 << 20


def _mmap_copy(path: Path, size: int) -> None:
    """What the staging does today: copy each chunk of a private mapping into a reused buffer (faults + memcpy)."""
    m = np.memmap(path, dtype=np.uint8, mode="c")
    buf = np.empty(CHUNK, dtype=np.uint8)
    for off in range(0, size, CHUNK):
        np.copyto(buf, m[off:off + CHUNK])
    del m


def _pread_range(fd: int, start: int, stop: int, buf: memoryview, h2d: torch.Tensor | None,
                 host: torch.Tensor | None, stream: torch.cuda.Stream | None) -> None:
    off = start
    while off < stop:
        n = os.preadv(fd, [buf[: min(CHUNK, stop - off)]], off)
        if h2d is not None:
            with torch.cuda.stream(stream):
                h2d[:n].copy_(host[:n], non_blocking=True)
            stream.synchronize()
        off += n


def _pread(path: Path, size: int, threads: int, gpu: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        per = -(-size // threads)
        per = -(-per // 4096) * 4096
        jobs = []
        for i in range(threads):
            if gpu:
                host = torch.empty(CHUNK, dtype=torch.uint8, pin_memory=True)
                buf = memoryview(host.numpy())
                dev = torch.empty(CHUNK, dtype=torch.uint8, device="cuda")
                jobs.append((i * per, min(size, (i + 1) * per), buf, dev, host, torch.cuda.Stream()))
            else:
                jobs.append((i * per, min(size, (i + 1) * per), memoryview(bytearray(CHUNK)), None, None, None))
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda j: _pread_range(fd, *j), jobs))
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "blob.bin"
    size = int(args.gb * 1e9) // CHUNK * CHUNK
    with open(path, "wb") as f:
        block = np.random.default_rng(0).standard_normal(CHUNK // 4, dtype=np.float32).tobytes()
        for _ in range(size // CHUNK):
            f.write(block)
    _pread(path, size, 1, False)
    runs = {
        "mmap_copy_1": lambda: _mmap_copy(path, size),
        "pread_1": lambda: _pread(path, size, 1, False),
        f"pread_{args.threads}": lambda: _pread(path, size, args.threads, False),
    }
    if torch.cuda.is_available():
        runs["pinned_h2d_1"] = lambda: _pread(path, size, 1, True)
        runs[f"pinned_h2d_{args.threads}"] = lambda: _pread(path, size, args.threads, True)
    out = {}
    for name, fn in runs.items():
        fn()
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[name] = round(size / 1e9 / statistics.median(times), 2)
    path.unlink()
    print(json.dumps({"gb": size / 1e9, "gb_per_s": out}))


if __name__ == "__main__":
    main()
