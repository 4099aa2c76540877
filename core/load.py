"""Reading the stats cache back as pandas tables, for notebooks, the dashboard and the export.

``load_stats`` never opens a checkpoint: it reads the Parquet fragments that ``summarize`` wrote, concatenates them
with pyarrow and converts once. Fragments of checkpoints deleted since are left out; an unreadable fragment or one
of another format version is left out with one :class:`~ckptboard.core.cache.CacheWarning`.

Reading hundreds of fragments costs ~5 ms each, so the concatenated tables are also kept as a *snapshot*: one
Parquet file per table in ``CACHE/snapshot/<key>/``, where the key hashes every fragment's name, size and mtime.
Any new, changed or removed fragment changes the key, so a stale snapshot is never read; it is rebuilt by the next
``load_stats`` (best effort: a read-only cache folder just goes without).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ckptboard.core.fragment import FragmentReadError, read_fragment
from ckptboard.core.atomic import DIR_MODE, TMP_PREFIX
from ckptboard.core.cache import StatsCache, warn_invalid
from ckptboard.core.errors import UsageError
from ckptboard.core.schema import StatsTables, TableName, arrow_schema

__all__ = ["load_stats"]

_READERS = 4  # Parquet decoding releases the GIL: a few threads hide file-system latency


def load_stats(root: str | Path, cache_dir: str | Path | None = None) -> StatsTables:
    """Every table of ROOT's stats cache as DataFrames (columns of :mod:`ckptboard.core.schema`)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; pass the folder that was summarised")
    cache = StatsCache(root, cache_dir)
    paths = cache.fragments()
    snapshot = cache.dir / _SNAPSHOT_DIRNAME / cache.fingerprint(paths)[:20]
    combined, problems = _read_snapshot(snapshot)
    if combined is None:
        combined, problems = _combine_fragments(paths)
        _write_snapshot(snapshot, combined, problems)
    warn_invalid(problems, "were unreadable or of another format version and are left out (run summarize)")
    combined = _without_deleted_checkpoints(root, combined)
    frames = {name: _to_pandas(table) for name, table in combined.items()}
    return StatsTables(**{f.name: frames[f.name] for f in fields(StatsTables)})


_SNAPSHOT_DIRNAME = "snapshot"  # a sub-folder: StatsCache.fragments() lists only the cache folder's own files
_PROBLEMS_FILE = "problems.json"


def _combine_fragments(paths: list[Path]) -> tuple[dict[str, pa.Table], list[str]]:
    """Every readable fragment's tables, concatenated per table; the unreadable ones as problem lines."""
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        results = list(pool.map(_read_one, paths))
    parts: dict[TableName, list[pa.Table]] = {name: [] for name in TableName}
    problems = []
    for path, result in zip(paths, results):
        if isinstance(result, str):
            problems.append(f"{path.name}: {result}")
            continue
        for name, table in result[1].items():
            if table.num_rows:
                parts[name].append(table)
    combined = {name: pa.concat_tables(t) if t else arrow_schema(name).empty_table() for name, t in parts.items()}
    return combined, problems


def _without_deleted_checkpoints(root: Path, combined: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Rows of checkpoints deleted since they were summarised are left out (``summarize`` prunes their fragments)."""
    relpaths = set()
    for table in combined.values():
        relpaths.update(table.column("checkpoint").unique().to_pylist())
    deleted = [r for r in relpaths if r is not None and not (root / r).exists()]
    if not deleted:
        return combined
    gone = pa.array(deleted, pa.string())
    return {name: t.filter(pc.invert(pc.is_in(t.column("checkpoint"), value_set=gone))) for name, t in combined.items()}


def _read_snapshot(folder: Path) -> tuple[dict[str, pa.Table] | None, list[str]]:
    if not folder.is_dir():
        return None, []
    try:
        problems = json.loads((folder / _PROBLEMS_FILE).read_text())
        tables = {name: pq.read_table(folder / f"{name}.parquet", schema=arrow_schema(name)) for name in TableName}
    except (OSError, ValueError, pa.ArrowException):
        return None, []  # removed or rewritten under us: read the fragments instead
    return tables, list(problems)


def _write_snapshot(folder: Path, combined: dict[str, pa.Table], problems: list[str]) -> None:
    """Write the tables into a temp folder, then rename it into place; drop older snapshots. Best effort."""
    parent = folder.parent
    try:
        parent.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))
        os.chmod(tmp, DIR_MODE)
        for name, table in combined.items():
            pq.write_table(table, tmp / f"{name}.parquet", compression="lz4")  # reads 2.4x faster than zstd here
        (tmp / _PROBLEMS_FILE).write_text(json.dumps(problems))
        try:
            os.rename(tmp, folder)  # atomic; fails if a concurrent reader already put the same snapshot there
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in parent.iterdir():
            if old.name != folder.name and not old.name.startswith(TMP_PREFIX):
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass  # a read-only or full cache folder: load from the fragments every time


def _read_one(path: Path):
    try:
        return read_fragment(path)
    except FragmentReadError as e:
        return str(e)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    # Stable: rows of one checkpoint keep the checkpoint's own (state_dict) order.
    sort = [c for c in ("run", "step", "checkpoint") if c in frame.columns]
    return frame.sort_values(sort, kind="stable", na_position="first").reset_index(drop=True)
