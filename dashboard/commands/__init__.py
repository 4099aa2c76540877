"""Subcommands of the ``ckptboard`` CLI: each module has ``add_parser(subparsers)``; the parser sets ``run``."""
