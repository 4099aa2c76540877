"""Mutation fuzzer for the checkpoint reader: every case must read or end in one ``CkptboardError``.

    python -m tests.fuzz.mutate --cases 200000 --seed 1 [--batch 500] [--jobs 1]
    python tests/fuzz/mutate.py --replay 1:12345     # re-run one case in this process, with its traceback

Seeds are real checkpoints written here by torch and safetensors (a ``torch.save`` zip of a state_dict with its
optimizer, the same in the legacy format, a safetensors file, a Lightning-style dict with metadata, and a zip whose
``data.pkl`` is deflated). Each case mutates one seed (byte and bit flips, truncation, splices, deletions,
length-field tweaks, or pickle-opcode-aware edits of ``data.pkl`` re-packed into the archive), opens the result with
:func:`ckptboard.core.reader.open_checkpoint` and loads every tensor. Cases run in batches, each batch in a worker
process with ``RLIMIT_AS`` (1 GiB above what the worker holds after importing torch) that reports every case as it
goes, so that a crash (signal) or a hang (no report within ``--hang`` seconds: the worker is killed) is charged to
its case and the next worker carries on after it (a hang: ``--hang`` seconds of the worker's CPU time, or six
times that of wall time, on one case). Outcomes: ``ok``, ``expected`` (a CkptboardError), ``unhandled``
(any other exception), ``hang``, ``crash``, ``memory`` (MemoryError anywhere, or peak RSS above ``--rss-gb``).
Only the standard library and the project are used; a case is reproducible from ``(seed, case number)``.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import pickle
import pickletools
import random
import resource
import select
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from pathlib import Path

OUTCOMES = ("ok", "expected", "unhandled", "hang", "crash", "memory")
_INTERESTING = (0, 1, 2, 7, 8, 63, 64, 255, 256, 0x7FFF, 0xFFFF, 1 << 27, 0x7FFFFFFF, 0xFFFFFFFF)
_OPCODES = [op.code.encode("latin-1") for op in pickletools.opcodes]


# --- seeds ------------------------------------------------------------------------------------------------------


def build_seeds(folder: Path) -> dict[str, bytes]:
    """Real checkpoints, small enough that a mutation hits structure more often than tensor bytes."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    mixed = {"h": torch.ones(3, dtype=torch.float16), "b": torch.arange(4, dtype=torch.bfloat16),
             "i": torch.arange(3, dtype=torch.int32), "view": torch.arange(8.0)[2:6]}  # fmt: skip
    lightning = {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [{"last_epoch": 3, "_step_count": 4}],
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}},
        "hyper_parameters": {"lr": 1e-3, "layers": [3, 4, 2], "name": "net"},
    }  # fmt: skip
    seeds: dict[str, bytes] = {}

    def saved(obj: object, legacy: bool = False) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
        return buffer.getvalue()

    seeds["zip"] = saved({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": 7})
    seeds["legacy"] = saved({"model": net.state_dict(), "mixed": mixed}, legacy=True)
    seeds["lightning"] = saved(lightning)
    seeds["mixed"] = saved(mixed)
    seeds["deflated"] = repack(seeds["zip"], zip_member(seeds["zip"], "data.pkl"), zipfile.ZIP_DEFLATED)
    path = folder / "seed.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path, metadata={"format": "pt"})
    seeds["safetensors"] = path.read_bytes()
    return seeds


@functools.lru_cache(maxsize=16)
def zip_member(archive: bytes, suffix: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(suffix)))


def repack(archive: bytes, data_pkl: bytes, compress: int = zipfile.ZIP_STORED) -> bytes:
    """``archive`` with its ``data.pkl`` replaced (and optionally compressed); other members stored."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            is_pkl = info.filename.endswith("/data.pkl")
            dst.writestr(info.filename, data_pkl if is_pkl else src.read(info), compress if is_pkl else 0)
    return out.getvalue()


# --- mutations ----------------------------------------------------------------------------------------------------


def _flip_bytes(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)


def _flip_bits(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _truncate(rng: random.Random, data: bytearray) -> None:
    del data[rng.randrange(len(data)) :]


def _delete(rng: random.Random, data: bytearray) -> None:
    at = rng.randrange(len(data))
    del data[at : at + rng.randint(1, 64)]


def _splice(rng: random.Random, data: bytearray) -> None:
    at, src = rng.randrange(len(data)), rng.randrange(len(data))
    chunk = data[src : src + rng.randint(1, 256)]
    if rng.random() < 0.5:
        data[at:at] = chunk
    else:
        data[at : at + len(chunk)] = chunk


def _length_field(rng: random.Random, data: bytearray) -> None:
    """A 2-, 4- or 8-byte little-endian field (zip sizes and offsets, pickle lengths) set to an edge value."""
    width = rng.choice((2, 4, 8))
    at = rng.randrange(max(1, len(data) - width))
    value = rng.choice(_INTERESTING + (len(data), len(data) - at, rng.randrange(1 << 32)))
    data[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")


_BYTE_MUTATIONS = (_flip_bytes, _flip_bits, _truncate, _delete, _splice, _length_field)


@functools.lru_cache(maxsize=2048)
def _pickle_ops(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of each opcode of the first pickle in ``data`` (as far as it parses)."""
    spans, last = [], 0
    try:
        for _op, _arg, pos in pickletools.genops(data):
            if spans:
                spans[-1] = (spans[-1][0], pos)
            spans.append((pos, pos + 1))
            last = pos
    except Exception:  # noqa: BLE001 - a seed that is itself mutated parses only partly
        pass
    return spans or [(last, last + 1)]


def mutate_pickle(rng: random.Random, pkl: bytes) -> bytes:
    """Opcode-aware edits: replace, duplicate, delete or move an opcode; insert BUILD/SETITEM/memo traffic."""
    data = bytearray(pkl)
    spans = _pickle_ops(pkl)
    start, end = rng.choice(spans)
    kind = rng.randrange(7)
    if kind == 0:
        data[start : start + 1] = rng.choice(_OPCODES)
    elif kind == 1:
        data[end:end] = data[start:end]
    elif kind == 2:
        del data[start:end]
    elif kind == 3:
        other = rng.choice(spans)
        data[start:start] = data[other[0] : other[1]]
    elif kind == 4:
        data[start:start] = rng.choice([pickle.BUILD, pickle.SETITEM, pickle.SETITEMS, pickle.APPEND, pickle.APPENDS,
                                        pickle.REDUCE, pickle.NEWOBJ, pickle.TUPLE2, pickle.DUP, pickle.POP])  # fmt: skip
    elif kind == 5:
        index = rng.choice(_INTERESTING + (rng.randrange(64),))
        op = rng.choice([pickle.LONG_BINPUT, pickle.LONG_BINGET])
        data[start:start] = op + (index % (1 << 32)).to_bytes(4, "little")
    else:
        n = rng.choice((8, 40, 200))  # a burst of references to one memo entry: laughs in miniature
        data[start:start] = pickle.MARK + (pickle.BINGET + bytes([rng.randrange(8)])) * n + pickle.LIST
    return bytes(data)


def mutate(rng: random.Random, name: str, seed: bytes, seeds: dict[str, bytes]) -> bytes:
    """One mutated file from ``seed``."""
    roll = rng.random()
    if name in ("zip", "lightning", "mixed", "deflated") and roll < 0.45:
        pkl = mutate_pickle(rng, zip_member(seed, "data.pkl"))
        compress = zipfile.ZIP_DEFLATED if name == "deflated" or rng.random() < 0.1 else zipfile.ZIP_STORED
        data = bytearray(repack(seed, pkl, compress))
        if rng.random() < 0.2:
            rng.choice(_BYTE_MUTATIONS)(rng, data)
        return bytes(data)
    if name == "legacy" and roll < 0.45:
        spans = _pickle_ops(seed)
        pos = len(pickle.dumps(0x1950A86A20F9469CFC6C, 2)) if rng.random() < 0.2 else rng.choice(spans)[0]
        head, tail = seed[:pos], seed[pos:]
        return head + mutate_pickle(rng, tail)
    data = bytearray(seed)
    if roll > 0.95:  # splice in part of another seed
        other = seeds[rng.choice(sorted(seeds))]
        at, src = rng.randrange(len(data)), rng.randrange(len(other))
        data[at:at] = other[src : src + rng.randint(16, 1024)]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if data:
            rng.choice(_BYTE_MUTATIONS)(rng, data)
    return bytes(data)


def case_file(seed: int, case: int, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """The seed name and bytes of case ``case`` of run ``seed`` (deterministic)."""
    rng = random.Random(seed * 1_000_003 + case)
    name = rng.choice(sorted(seeds))
    return name, mutate(rng, name, seeds[name], seeds)


# --- running ------------------------------------------------------------------------------------------------------


def run_case(path: Path) -> tuple[str, str]:
    """Open ``path``, load every tensor: ``(outcome, detail)``."""
    from ckptboard.core.errors import CkptboardError
    from ckptboard.core.reader import open_checkpoint

    try:
        with open_checkpoint(path) as ckpt:
            for info in ckpt.tensors:
                ckpt.load(info)
        return "ok", ""
    except CkptboardError as e:
        cause: BaseException | None = e
        while cause is not None:
            if isinstance(cause, MemoryError):
                return "memory", f"{type(e).__name__}: {e}"[:300]
            cause = cause.__cause__ or cause.__context__
        return "expected", type(e).__name__
    except MemoryError as e:
        return "memory", f"MemoryError: {e}"[:300]
    except Exception as e:  # noqa: BLE001 - the point: anything else is a finding
        frame = traceback.extract_tb(e.__traceback__)[-1]
        return "unhandled", f"{type(e).__name__}: {str(e)[:200]} at {Path(frame.filename).name}:{frame.lineno}"


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker(seed: int, first: int, last: int, rss_gb: float) -> None:
    """Run cases ``first..last-1`` and print one JSON line before and after each (the parent watches)."""
    import torch  # noqa: F401 - imported before the limit is set: it is not the reader's memory

    import ckptboard.core.reader  # noqa: F401

    with open("/proc/self/status") as f:
        vm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmSize"))
    limit = vm_kib * 1024 + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ckptfuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        seeds = build_seeds(Path(tmp))
        for case in range(first, last):
            name, data = case_file(seed, case, seeds)
            path = Path(tmp) / f"case{Path(name).suffix or '.pt'}"
            path.write_bytes(data)
            print(json.dumps({"start": case, "seed_file": name}), flush=True)
            _reset_peak_rss()
            outcome, detail = run_case(path)
            if outcome != "memory" and _peak_rss_kib() > rss_gb * (1 << 20):
                outcome, detail = "memory", f"peak RSS {_peak_rss_kib() // 1024} MiB"
            print(json.dumps({"case": case, "outcome": outcome, "detail": detail}), flush=True)


def _run_batch(args: argparse.Namespace, first: int, last: int, on_case) -> None:
    """Workers for cases ``first..last-1``; a dead or stuck worker charges its case and a new one resumes."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    idle_restarts = 0
    while first < last:
        cmd = [sys.executable, "-m", "tests.fuzz.mutate", "--worker", str(args.seed), str(first), str(last),
               "--rss-gb", str(args.rss_gb)]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        current, resume, case_cpu, case_wall = None, first, 0.0, 0.0
        while True:
            # a case in flight has --hang seconds of CPU (wall time on a shared, niced machine says little; a
            # case blocked without using CPU is caught by the wall cap); starting up and moving on wait longer
            wait = args.hang if current is not None else _IDLE_WAIT
            ready, _, _ = select.select([proc.stdout], [], [], wait)
            if not ready and current is not None:
                used, waited = _cpu_seconds(proc.pid) - case_cpu, time.monotonic() - case_wall
                if used < args.hang and waited < _WALL_FACTOR * args.hang:
                    continue
            if not ready:
                proc.kill()
                proc.wait()
                if current is not None:
                    on_case(current, "hang", f"no answer within {args.hang} s")
                    resume = current + 1
                break
            line = proc.stdout.readline()
            if not line:
                code = proc.wait()
                if current is not None:
                    on_case(current, "crash", f"worker exit {code} ({_signal_name(code)}) {proc.stderr.read()[-300:]}")
                    resume = current + 1
                elif code != 0 and resume == first:
                    raise RuntimeError(f"a fuzz worker failed before its first case: {proc.stderr.read()[-2000:]}")
                break
            record = json.loads(line)
            if "start" in record:
                current, case_cpu, case_wall = record["start"], _cpu_seconds(proc.pid), time.monotonic()
            else:
                on_case(record["case"], record["outcome"], record["detail"])
                current, resume = None, record["case"] + 1
        if resume == first:  # no case answered: a worker that cannot start or stalls between cases
            idle_restarts += 1
            if idle_restarts > 3:
                raise RuntimeError(f"fuzz workers make no progress at case {first}: {proc.stderr.read()[-2000:]}")
        first = resume


_IDLE_WAIT, _WALL_FACTOR = 300.0, 6


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _signal_name(code: int) -> str:
    import signal

    return signal.Signals(-code).name if code < 0 else f"status {code}"


def fuzz(args: argparse.Namespace) -> Counter:
    """Run ``args.cases`` cases; print counts (and the findings) as it goes; return the counts."""
    counts: Counter = Counter()
    findings: list[str] = []
    start = time.monotonic()

    def on_case(case: int, outcome: str, detail: str) -> None:
        counts[outcome] += 1
        if outcome in ("unhandled", "hang", "crash", "memory"):
            findings.append(f"{args.seed}:{case} {outcome}: {detail}")
            if len(findings) <= args.show:
                print(f"  finding {findings[-1]}", file=sys.stderr, flush=True)

    batches = [(i, min(i + args.batch, args.first + args.cases)) for i in range(args.first, args.first + args.cases, args.batch)]
    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            for _ in pool.map(lambda b: _run_batch(args, b[0], b[1], on_case), batches):
                _report(counts, start, args.cases, final=False)
    else:
        for b in batches:
            _run_batch(args, b[0], b[1], on_case)
            _report(counts, start, args.cases, final=False)
    _report(counts, start, args.cases, final=True)
    if args.findings:
        Path(args.findings).write_text("\n".join(findings) + ("\n" if findings else ""))
    return counts


def _report(counts: Counter, start: float, total: int, final: bool) -> None:
    done = sum(counts.values())
    seconds = time.monotonic() - start
    line = " ".join(f"{k}={counts[k]}" for k in OUTCOMES)
    rate = done / seconds if seconds else 0.0
    print(f"{'final' if final else 'progress'}: {done}/{total} cases, {line}, {rate:.1f} cases/s, {seconds:.0f} s", flush=True)


def replay(spec: str) -> None:
    """Re-run one case (``SEED:CASE``) in this process and print its outcome and traceback."""
    seed, case = (int(x) for x in spec.split(":"))
    with tempfile.TemporaryDirectory() as tmp:
        seeds = build_seeds(Path(tmp))
        name, data = case_file(seed, case, seeds)
        path = Path(tmp) / f"case{'.safetensors' if name == 'safetensors' else '.pt'}"
        path.write_bytes(data)
        print(f"seed file {name}, {len(data)} bytes -> {path}")
        from ckptboard.core.reader import open_checkpoint

        with open_checkpoint(path) as ckpt:
            for info in ckpt.tensors:
                ckpt.load(info)
        print("ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--first", type=int, default=0, help="first case number (to resume or split a run)")
    parser.add_argument("--batch", type=int, default=500, help="cases per worker process")
    parser.add_argument("--jobs", type=int, default=1, help="workers at a time")
    parser.add_argument("--hang", type=float, default=10.0, help="seconds without an answer that make a hang")
    parser.add_argument("--rss-gb", type=float, default=1.0, help="peak RSS that counts as over memory")
    parser.add_argument("--show", type=int, default=20, help="findings printed as they come")
    parser.add_argument("--findings", default="", help="write every finding to this file")
    parser.add_argument("--replay", default="", metavar="SEED:CASE", help="re-run one case here, with its traceback")
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.rss_gb)
        return 0
    if args.replay:
        replay(args.replay)
        return 0
    counts = fuzz(args)
    return 1 if any(counts[k] for k in ("unhandled", "hang", "crash", "memory")) else 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repository importable as the tests.fuzz package
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
