"""The app's configuration: ROOT and the options that travel after ``--``, parsed and validated once.

``ckptboard serve`` and the app itself (``streamlit run dashboard/app.py -- ROOT ...``) define their arguments with
:func:`add_app_arguments` and check them with :func:`config_from_args`, so both accept the same things; the app's
inputs that name files (a model SPEC typed in the app) go through :func:`resolve_under_root`.
"""

from __future__ import annotations

import argparse
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from ckptboard.core.errors import UsageError

__all__ = [
    "APP_PATH",
    "LOCAL_HOSTS",
    "AppConfig",
    "allowed_hosts",
    "add_app_arguments",
    "config_from_args",
    "parse_app_args",
    "parse_input_shape",
    "resolve_under_root",
    "streamlit_command",
]

APP_PATH = Path(__file__).resolve().parent / "app.py"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class AppConfig:
    """What the app was started on: ROOT and the options that travel after ``--``."""

    root: Path
    cache_dir: Path | None = None
    model: str | None = None
    input_shape: tuple[int, ...] | None = None
    trust: bool = False
    input_dtype: str | None = None  # of the FLOP input: int64 for token ids (default float32)
    spectral: str = "off"  # --spectral for checkpoints the app summarises (ckptboard.core.spectral.SpectralMode)

    def to_argv(self) -> list[str]:
        """The argv the app parses back into an equal config."""
        argv = [str(self.root)]
        if self.cache_dir is not None:
            argv += ["--cache-dir", str(self.cache_dir)]
        if self.model:
            argv += ["--model", self.model]
        if self.input_shape:
            argv += ["--input-shape", ",".join(map(str, self.input_shape))]
        if self.input_dtype:
            argv += ["--input-dtype", self.input_dtype]
        if self.trust:
            argv.append("--trust")
        if self.spectral != "off":
            argv += ["--spectral", self.spectral]
        return argv


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` (or ``1x3x32x32``) -> ``(1, 3, 32, 32)``; :class:`UsageError` on anything else."""
    from ckptboard.core.flops import parse_input_specs  # torch: only when a shape is typed

    return parse_input_specs([text])[0].shape


def resolve_under_root(root: Path, text: str | Path) -> Path:
    """``text`` (relative to ROOT, or absolute) resolved; :class:`UsageError` when it leaves ROOT."""
    root = Path(root).resolve()
    candidate = Path(text).expanduser()
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not path.is_relative_to(root):
        raise UsageError(f"{text}: outside ROOT {root}; the dashboard reads only files under ROOT")
    return path


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """ROOT and the options the app needs; shared by ``ckptboard serve`` and the app's own argv."""
    parser.add_argument("root", metavar="ROOT", help="folder of runs (or one run) holding checkpoints")
    parser.add_argument("--model", metavar="SPEC", help="path/to/file.py:factory or package.module:factory")
    parser.add_argument("--input-shape", metavar="SHAPE", help="input shape for the FLOP breakdown, e.g. 1,3,32,32")
    parser.add_argument("--input-dtype", metavar="DTYPE",
                        help="dtype of that input (default float32; int64 for token ids, which language models take)")
    parser.add_argument("--cache-dir", metavar="DIR", help="where the stats cache lives (default: the cache's own)")
    parser.add_argument("--trust", action="store_true", help="allow checkpoints that execute pickled code")
    parser.add_argument("--spectral", default="off", choices=("off", "default", "full"),
                        help="spectral health of the checkpoints the app summarises (see ckptboard summarize)")


def config_from_args(args: argparse.Namespace) -> AppConfig:
    """Validate the parsed arguments once, before any checkpoint is opened."""
    root = Path(args.root).expanduser()
    if not root.exists():
        raise UsageError(f"ROOT {root}: does not exist; give the folder your training run saves checkpoints in")
    if not root.is_dir():
        raise UsageError(f"ROOT {root}: is a file; give the folder that holds it (ckptboard inspect reads one file)")
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    dtype = getattr(args, "input_dtype", None)
    if dtype:
        from ckptboard.core.flops import parse_input_specs  # torch: only when a dtype is given

        dtype = parse_input_specs(["1"], [dtype])[0].dtype  # a torch dtype name, checked once
    cache_dir = Path(args.cache_dir).expanduser().resolve() if args.cache_dir else None
    return AppConfig(root=root.resolve(), cache_dir=cache_dir, model=args.model, input_shape=shape, trust=args.trust,
                     input_dtype=dtype, spectral=args.spectral)


def parse_app_args(argv: list[str]) -> AppConfig:
    """The app's argv (after ``--``) as an :class:`AppConfig`; :class:`UsageError` when it is wrong."""
    parser = argparse.ArgumentParser(prog="ckptboard app", exit_on_error=False, add_help=False)
    add_app_arguments(parser)
    try:
        args, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:
        raise UsageError(f"app arguments {argv}: {e}; run it as `streamlit run app.py -- ROOT [options]`") from None
    if unknown:
        raise UsageError(f"app arguments: unknown {unknown}; see `ckptboard serve --help`")
    return config_from_args(args)


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The names the server answers to (its Host allow-list): the localhost names, the bound address (on a wildcard
    address, this machine's name) and ``extra`` (``--allow-host``, e.g. a reverse proxy's name).

    Streamlit accepts any Host by default: a page on a foreign name that rebinds that name to 127.0.0.1 could then
    open the app's websocket as a same-origin page and read every statistic (DNS rebinding)."""
    names = list(LOCAL_HOSTS)
    names += [socket.gethostname(), socket.getfqdn()] if host in _WILDCARDS else [host]
    names += list(extra)
    return list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))


def streamlit_command(config: AppConfig, *, host: str, port: int, allow_hosts: tuple[str, ...] = ()) -> list[str]:
    """The ``streamlit run`` command line serving the app on ``host:port`` to the allowed Host names (through
    :mod:`ckptboard.dashboard.launch`, which warms the page's libraries while the server starts)."""
    hosts = [arg for name in allowed_hosts(host, allow_hosts) for arg in ("--server.allowedHosts", name)]
    return [
        sys.executable, "-m", "ckptboard.dashboard.launch", "run", str(APP_PATH),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
        "--logger.hideWelcomeMessage", "true",  # serve prints the one URL itself
        "--server.enableCORS", "true",
        "--server.enableXsrfProtection", "true",
        *hosts,
        "--",
        *config.to_argv(),
    ]  # fmt: skip
