"""The cache's commit records read as one index, and a copy of them all in one file.

Every fragment's commit record (its ``checkpoints`` file) holds the checkpoint's key (path, identity), run and row.
A reader needs all of them before any table (they are the dataset's index), and at hundreds of checkpoints opening
each costs ~0.5 ms. So when ``summarize`` looks at compaction it also writes them all into
``CACHE/compact/index.parquet``; a reader takes a record from that copy when the record's file is still at the
version copied (its ``mtime_ns``), and reads the others, and every record when the copy is missing or unreadable.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ckptboard.core.atomic import atomic_write
from ckptboard.core.fragment import COMMIT_TABLE, FragmentReadError, _header
from ckptboard.core.schema import FORMAT_VERSION, arrow_schema

__all__ = ["CommitRecord", "INDEX_NAME", "mtime_ns", "read_commits", "write_commit_index"]

INDEX_NAME = "index.parquet"  # in the ``compact`` folder (core.compact.COMPACT_DIRNAME)
_KEY = b"ckptboard.commit_index"
_READERS = 4  # Parquet decoding releases the GIL: a few threads hide file-system latency
_IDENTITY = ("size", "mtime_ns", "ino", "ctime_ns")


@dataclass(frozen=True)
class CommitRecord:
    """One commit record: its fragment's ``stem``, the checkpoint's ``relpath`` and ``run``, its ``checkpoints``
    row(s), the identity its key recorded and the record file's ``mtime_ns`` (``written_ns``: its version)."""

    stem: str
    relpath: str
    run: str | None
    rows: pa.Table
    identity: tuple[int, int, int, int] | None
    written_ns: int

    @property
    def step(self) -> int | None:
        return self.rows.column("step")[0].as_py() if self.rows.num_rows else None


def read_commits(paths: list[Path], index_path: Path | None = None) -> tuple[list[CommitRecord], list[str]]:
    """The records of ``paths`` (in that order) and the unreadable ones as problems, taking those still at the
    version ``index_path`` copied from it."""
    copied = _read_index(index_path) if index_path is not None else {}
    records: dict[Path, CommitRecord | str] = {}
    todo = []
    for path in paths:
        record = copied.get(path.stem)
        if record is not None and mtime_ns(path) == record.written_ns:
            records[path] = record
        else:
            todo.append(path)
    if todo:
        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            records.update(zip(todo, pool.map(read_commit, todo)))
    out, problems = [], []
    for path in paths:
        result = records[path]
        if isinstance(result, str):
            problems.append(f"{path.name}: {result}")
        else:
            out.append(result)
    return out, problems


def read_commit(path: Path) -> CommitRecord | str:
    """One commit record, or what makes it unreadable."""
    try:
        written_ns = path.stat().st_mtime_ns
        file = pq.ParquetFile(path)
        header = _header(file.metadata.metadata)  # the version first: another version's columns may differ
        rows = file.read().replace_schema_metadata(None)
        key = header.key
        identity = tuple(key[f] for f in _IDENTITY) if all(f in key for f in _IDENTITY) else None
        return CommitRecord(path.stem, str(key["relpath"]), header.info.get("run"), rows, identity, written_ns)
    except FragmentReadError as e:
        return str(e)
    except (OSError, pa.ArrowException, KeyError) as e:
        return f"unreadable ({type(e).__name__}: {e})"


def write_commit_index(index_path: Path, records: list[CommitRecord]) -> None:
    """Copy ``records`` into one file (atomically), their rows in order and the rest in its footer."""
    entries = {}
    parts = []
    offset = 0
    for r in records:
        entries[r.stem] = {"relpath": r.relpath, "run": r.run, "identity": r.identity, "written_ns": r.written_ns,
                           "offset": offset, "rows": r.rows.num_rows}
        offset += r.rows.num_rows
        if r.rows.num_rows:
            parts.append(r.rows)
    schema = arrow_schema(COMMIT_TABLE)
    table = pa.concat_tables(parts) if parts else schema.empty_table()
    record = {"format_version": FORMAT_VERSION, "records": entries}
    table = table.cast(schema).replace_schema_metadata({_KEY: json.dumps(record).encode()})
    index_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(index_path, lambda f: pq.write_table(table, f, compression="zstd"))


def _read_index(path: Path) -> dict[str, CommitRecord]:
    """The records copied in ``path`` by stem; none when it is missing, unreadable or of another format version."""
    try:
        table = pq.ParquetFile(path).read()  # not pq.read_table: that imports pyarrow.dataset, and pandas with it
        record = json.loads(table.schema.metadata[_KEY])
        if record["format_version"] != FORMAT_VERSION:
            return {}
        table = table.replace_schema_metadata(None)
        out = {}
        for stem, e in record["records"].items():
            identity = tuple(e["identity"]) if e["identity"] is not None else None
            rows = table.slice(int(e["offset"]), int(e["rows"]))
            out[stem] = CommitRecord(stem, str(e["relpath"]), e["run"], rows, identity, int(e["written_ns"]))
        return out
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        return {}


def mtime_ns(path: Path) -> int | None:
    """``path``'s mtime in nanoseconds (a commit record's version), None when it is gone."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
