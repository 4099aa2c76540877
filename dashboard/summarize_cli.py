"""What ``ckptboard summarize`` and ``ckptboard export`` share: the options that choose where and how ROOT is
summarised, the executor registry, and one run of :func:`ckptboard.core.summarize.refresh` with a progress bar.

Executors are looked up by name in :data:`EXECUTORS` (``local``, ``dask``; others register there).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from ckptboard.core.errors import UsageError
from ckptboard.core.executors import Executor, LocalExecutor, default_workers
from ckptboard.core.limits import DEFAULT_MAX_MEMORY, WorkerLimits

if TYPE_CHECKING:  # core.summarize is imported when a command runs, not when the CLI builds its parser
    from ckptboard.core.summarize import Plan, SummaryReport

__all__ = ["EXECUTORS", "POOL_MIN_BYTES", "add_summarize_options", "check_summarize_options", "make_executor",
           "summarize_with_progress", "worker_limits"]


# Below this many bytes to read, the default is to summarise in-process: starting worker processes (each imports
# torch) costs seconds, more than a pool saves on small work.
POOL_MIN_BYTES = 512 * 1000 * 1000


def _local(args: argparse.Namespace, todo_bytes: int) -> Executor:
    # Always in worker processes (one, for small work): a hostile file ends as a recorded failure, never as this
    # process killed or hung.
    workers = args.workers if args.workers is not None else (
        default_workers() if todo_bytes >= POOL_MIN_BYTES else 1)
    return LocalExecutor(workers, limits=worker_limits(args), isolate=True)


def _dask(args: argparse.Namespace, todo_bytes: int) -> Executor:
    from ckptboard.core.executors_dask import DaskExecutor  # optional extra: imported only when asked for

    return DaskExecutor(args.scheduler, args.workers, on_start=_print_dashboard_link)


def _print_dashboard_link(executor) -> None:
    if executor.dashboard_link:
        from tqdm import tqdm

        tqdm.write(f"Dask dashboard: {executor.dashboard_link}", file=sys.stderr)


# --executor NAME -> factory(args, bytes to read). Another executor (dask) registers here with its own options.
EXECUTORS: dict[str, Callable[[argparse.Namespace, int], Executor]] = {"local": _local, "dask": _dask}


def add_summarize_options(parser: argparse.ArgumentParser) -> None:
    """ROOT and the options shared by every command that fills the stats cache."""
    parser.add_argument("root", metavar="ROOT", help="folder of runs (or one run) holding checkpoints")
    parser.add_argument("--cache-dir", metavar="DIR", default=None,
                        help="where the stats cache lives (default: ROOT/.ckptboard; use for a read-only ROOT)")
    parser.add_argument("--device", default="cpu", help="where statistics are computed: cpu (default) or cuda[:N]")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes for the local executor or the Dask LocalCluster (default: the cores, "
                             "bounded by memory; "
                             "in-process when under 512 MB is to be read)")
    parser.add_argument("--executor", default="local", metavar="NAME",
                        help=f"where tasks run: {', '.join(EXECUTORS)} (default: local)")
    parser.add_argument("--scheduler", metavar="ADDR", default=None,
                        help="with --executor dask: the Dask scheduler, e.g. tcp://host:8786 (default: start a "
                             "LocalCluster of --workers processes)")
    parser.add_argument("--model", metavar="SPEC", default=None,
                        help="file.py:factory or package.module:factory building the model, for classification")
    parser.add_argument("--spectral", default="off", choices=("off", "default", "full"),
                        help="spectral health of every 2-D/conv weight: off (default); default: top singular value "
                        "and stable rank (Lanczos power iteration); full: the whole spectrum and its power-law alpha "
                        "(matrices up to 4096 on the smaller side)")
    parser.add_argument("--trust", action="store_true",
                        help="allow files that need pickled code to run (only for files you trust)")
    parser.add_argument("--max-memory", metavar="SIZE", default=None,
                        help=f"memory a local worker may use per checkpoint beyond the files it reads, e.g. 4G "
                             f"(default: env CKPTBOARD_MAX_MEMORY, else {DEFAULT_MAX_MEMORY >> 30}G; 0: no limit)")
    parser.add_argument("--timeout", metavar="S", default=None,
                        help="seconds a local worker may spend on one checkpoint (default: env CKPTBOARD_TIMEOUT, "
                             "else 120 s + 1 s per 20 MB; 0: no limit)")


def worker_limits(args: argparse.Namespace) -> WorkerLimits:
    """The local workers' limits from ``--max-memory``/``--timeout``, the environment or the defaults."""
    return WorkerLimits.from_options(args.max_memory, args.timeout)


def _check_executor_options(args: argparse.Namespace) -> None:
    worker_limits(args)  # a malformed --max-memory/--timeout is a UsageError before any file is opened
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    if args.executor not in EXECUTORS:
        raise UsageError(f"--executor {args.executor}: unknown; choose one of {', '.join(EXECUTORS)}")
    if args.scheduler is not None and args.executor != "dask":
        raise UsageError(f"--scheduler {args.scheduler} needs --executor dask")


def make_executor(args: argparse.Namespace, todo_bytes: int) -> Executor:
    """The executor named by ``--executor`` for ``todo_bytes`` of work; :class:`UsageError` for bad options."""
    _check_executor_options(args)
    return EXECUTORS[args.executor](args, todo_bytes)


def check_summarize_options(args: argparse.Namespace) -> Path:
    """ROOT and the executor options checked at the boundary: before any file is opened or torch imported."""
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; pass the folder that holds the training run's checkpoints")
    _check_executor_options(args)
    return root


def summarize_with_progress(args: argparse.Namespace) -> SummaryReport:
    """Validate the options, summarise ROOT with a bytes progress bar, print failures and the final line."""
    root = check_summarize_options(args)
    from tqdm import tqdm

    from ckptboard.core.gcfreeze import freeze_short_lived
    from ckptboard.core.stats import resolve_device
    from ckptboard.core.summarize import refresh

    device = str(resolve_device(args.device))
    freeze_short_lived()  # the ckptboard command ends with its work: its imports out of the collector's way
    tqdm.monitor_interval = 0  # no monitor thread: a single-threaded CLI can fork its workers (core.executors)
    with ExitStack() as stack:
        bar: tqdm | None = None
        sizes: dict[str, int] = {}

        def on_plan(work: Plan) -> None:
            nonlocal bar
            sizes.update((task.relpath, task.size) for task in work.tasks)
            bar = stack.enter_context(tqdm(total=work.todo_bytes, unit="B", unit_scale=True, unit_divisor=1000,
                                           desc="summarize", file=sys.stderr, dynamic_ncols=True,
                                           disable=not work.tasks))

        report = refresh(root, cache_dir=args.cache_dir, device=device, model=args.model, trust=args.trust,
                         spectral=args.spectral, limits=worker_limits(args) if args.executor == "local" else None,
                         executor=lambda work: make_executor(args, work.todo_bytes), on_plan=on_plan,
                         progress=lambda receipt: bar.update(sizes.get(receipt.relpath, 0)),
                         on_compact=lambda run, n: tqdm.write(
                             f"compacting run {run!r}: {n} checkpoints' tables into one file each", file=sys.stderr))
    for failure in report.failures:
        print(f"FAILED {failure.relpath}: {failure.error}: {failure.message}", file=sys.stderr)
    print(report.line())
    return report
