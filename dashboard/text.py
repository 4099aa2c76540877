"""Plain-text formatting for the CLI, the report and the figures' labels: bytes, counts, SI quantities, tables.

One implementation of each, so that ``inspect``, ``size``, ``flops``, the HTML report and the hover texts write a
number the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["format_bytes", "format_count", "format_si", "format_table", "module_label"]

_ROOT_LABEL = "(model)"


def _missing(n) -> bool:
    """None, NaN, ``pd.NA`` or ``NaT``: an absent value, told without importing pandas (``--help`` stays light)."""
    if n is None:
        return True
    try:
        return bool(n != n)  # NaN and NaT are unequal to themselves
    except TypeError:  # pd.NA refuses to be a bool
        return True


def format_bytes(n: float | None) -> str:
    """``1.5 MiB``: binary units, one decimal (whole bytes below 1 KiB); ``""`` for a missing value."""
    if _missing(n):
        return ""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - loop always returns


def format_count(n: int | None) -> str:
    """``1,234,567``; ``""`` for a missing value."""
    return "" if n is None else f"{int(n):,}"


def format_si(n: int, unit: str) -> str:
    """``4.42 MFLOP``: SI prefixes (M = 10^6), as FLOP counts are usually quoted."""
    value = float(n)
    for prefix in ("", "K", "M", "G", "T", "P"):
        if abs(value) < 1000 or prefix == "P":
            return f"{int(value)} {unit}" if not prefix else f"{value:.2f} {prefix}{unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def module_label(module: str) -> str:
    """``(model)`` for the root, else the last dotted part, indented two spaces per depth."""
    if not module:
        return _ROOT_LABEL
    return "  " * (module.count(".") + 1) + module.rpartition(".")[2]


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] | None = None, rule: bool = False
) -> str:
    """A plain-text table, columns two spaces apart; the columns in ``right`` are right-aligned (default: all but
    the first), ``rule`` draws a line of dashes under the header."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    right = set(range(1, len(headers))) if right is None else set(right)

    def line(cells: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(cells).rstrip()

    dashes = [line(["-" * w for w in widths])] if rule else []
    return "\n".join([line(headers), *dashes, *(line(r) for r in rows)])
