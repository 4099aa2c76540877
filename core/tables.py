"""Reading the stats cache back as pandas tables, for notebooks, the dashboard and the export.

``load_stats`` never opens a checkpoint: it reads the Parquet fragments that ``summarize`` wrote, concatenates them
with pyarrow and converts once. Fragments of checkpoints deleted since are left out; an unreadable fragment or one
of another format version is left out with one :class:`~ckptboard.core.cache.CacheWarning`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ckptboard.core._fragment import TABLE_SCHEMAS, FragmentReadError, read_fragment
from ckptboard.core.cache import StatsCache, warn_invalid
from ckptboard.core.errors import UsageError
from ckptboard.core.schema import StatsTables

__all__ = ["load_stats", "frozen_tensors", "run_summary"]

_READERS = 4  # Parquet decoding releases the GIL: a few threads hide file-system latency


def load_stats(root: str | Path, cache_dir: str | Path | None = None) -> StatsTables:
    """Every table of ROOT's stats cache as DataFrames (columns of :mod:`ckptboard.core.schema`)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; pass the folder that was summarised")
    cache = StatsCache(root, cache_dir)
    paths = cache.fragments()
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        results = list(pool.map(_read_one, paths))
    parts: dict[str, list[pa.Table]] = {name: [] for name in TABLE_SCHEMAS}
    problems = []
    for path, result in zip(paths, results):
        if isinstance(result, str):
            problems.append(f"{path.name}: {result}")
            continue
        header, tables = result
        relpath = header.key.get("relpath")
        if relpath is None or not (root / relpath).exists():
            continue  # its checkpoint was deleted; ``summarize`` prunes it
        for name, table in tables.items():
            if table.num_rows:
                parts[name].append(table)
    warn_invalid(problems, "were unreadable or of another format version and are left out (run summarize)")
    frames = {name: _to_pandas(name, tables) for name, tables in parts.items()}
    return StatsTables(**{f.name: frames[f.name] for f in fields(StatsTables)})


def frozen_tensors(tables: StatsTables) -> pd.DataFrame:
    """Tensors identical across their whole run (``update_norm == 0`` at every step): run, group, name, steps."""
    updates = tables.updates
    columns = ["run", "group", "name", "module", "kind", "n_updates"]
    if updates.empty:
        return pd.DataFrame(columns=columns)
    grouped = updates.groupby(["run", "group", "name"], sort=True, dropna=False)
    summary = grouped.agg(module=("module", "first"), kind=("kind", "first"), n_updates=("update_norm", "size"),
                          nonzero=("update_norm", lambda s: bool((s != 0).any())))
    frozen = summary[~summary["nonzero"]].reset_index()
    return frozen[columns].reset_index(drop=True)


def run_summary(tables: StatsTables) -> pd.DataFrame:
    """One row per run: checkpoints summarised, failed, first and last step, tensors in the last checkpoint."""
    ckpts, errors = tables.checkpoints, tables.errors
    runs = sorted(set(ckpts["run"]).union(errors["run"]))
    rows = []
    for run in runs:
        mine = ckpts[ckpts["run"] == run]
        steps = mine["step"].dropna()
        last = mine.sort_values("step").iloc[-1] if len(mine) else None
        rows.append({
            "run": run,
            "checkpoints": len(mine),
            "failed": int((errors["run"] == run).sum()),
            "first_step": steps.min() if len(steps) else None,
            "last_step": steps.max() if len(steps) else None,
            "n_tensors": int(last["n_tensors"]) if last is not None else 0,
        })
    return pd.DataFrame(rows, columns=["run", "checkpoints", "failed", "first_step", "last_step", "n_tensors"])


def _read_one(path: Path):
    try:
        return read_fragment(path)
    except FragmentReadError as e:
        return str(e)


def _to_pandas(name: str, tables: list[pa.Table]) -> pd.DataFrame:
    table = pa.concat_tables(tables) if tables else TABLE_SCHEMAS[name].empty_table()
    frame = table.to_pandas()
    # Stable: rows of one checkpoint keep the checkpoint's own (state_dict) order.
    sort = [c for c in ("run", "step", "checkpoint") if c in frame.columns]
    return frame.sort_values(sort, kind="stable", na_position="first").reset_index(drop=True)
