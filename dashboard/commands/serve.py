"""``ckptboard serve ROOT``: validate ROOT, print the URL and run the Streamlit app on it.

The arguments are the app's own (:mod:`ckptboard.dashboard.config`), so that ``serve`` and the app parse them the
same way. Streamlit is told the names it answers to (``server.allowedHosts``: localhost, ``--host``, ``--allow-host``),
so that a foreign name rebound to this machine cannot open the app's websocket.
"""

from __future__ import annotations

import argparse
import signal
import subprocess

from ckptboard.core.errors import UsageError
from ckptboard.dashboard.config import add_app_arguments, config_from_args, streamlit_command

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="open the dashboard over ROOT in a browser (Streamlit)",
        description="Serve the dashboard over ROOT: every folder holding checkpoints is a run. An empty stats cache "
        "is filled first (with progress in the page); checkpoints written later show up on Refresh. Binds to "
        "127.0.0.1 unless --host says otherwise; no usage statistics are sent.",
        epilog="example: ckptboard serve runs/ --model runs/model.py:Net --input-shape 1,3,32,32",
    )  # fmt: skip
    add_app_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8501, help="port to listen on (default: 8501)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="another Host name the server answers to, e.g. a reverse proxy's (repeatable; "
                             "the localhost names and --host are always allowed)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: expected 1..65535")
    shown_host = "localhost" if args.host in ("127.0.0.1", "localhost", "::1") else args.host
    print(f"ckptboard: serving {config.root} at http://{shown_host}:{args.port}", flush=True)
    proc = subprocess.Popen(streamlit_command(config, host=args.host, port=args.port,
                                              allow_hosts=tuple(args.allow_host)))
    # A supervisor's SIGTERM must reach Streamlit too, or the server outlives this process.
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=15)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
