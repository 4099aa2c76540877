"""The stats cache: one fragment per checkpoint in ``ROOT/.ckptboard/`` (or ``cache_dir``), stored as one flat
Parquet file per table (:mod:`ckptboard.core.fragment`) so that :mod:`ckptboard.core.dataset` can scan a table.

A fragment is named after its checkpoint's relative path (its *stem*) and its commit record holds, in its footer, the
format version and the key it was computed for (:func:`cache_key`): the checkpoint's relative path and
:class:`~ckptboard.core.discover.FileIdentity`, the same of the previous and the first checkpoint of its run (its
update statistics depend on them), and a fingerprint of the ``--model`` used for classification. A fragment whose key
differs is stale and recomputed quietly; one that is unreadable or of another format version (an older cache's
single-file fragments included) is recomputed too, with one :class:`CacheWarning` per command naming them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptboard.core.errors import CacheError
from ckptboard.core.fragment import (
    COMMIT_TABLE,
    TMP_PREFIX,
    FragmentReadError,
    Header,
    read_header,
    remove_fragment,
    table_path,
    write_fragment,
)
from ckptboard.core.records import StrEnum
from ckptboard.core.schema import FORMAT_VERSION

if TYPE_CHECKING:
    from ckptboard.core.discover import CheckpointFile

__all__ = ["CACHE_DIRNAME", "PARTS_DIRNAME", "CacheWarning", "StatsCache", "Lookup", "LookupStatus", "cache_key", "key_covers", "warn_invalid"]

CACHE_DIRNAME = ".ckptboard"
_SUFFIX = ".parquet"
_LEGACY_SNAPSHOT = "snapshot"  # format versions 1-2 kept concatenated tables here, superseded by reading the tables in place
_STALE_TMP_S = 3600.0  # a temp file this old belongs to a writer that died
PARTS_DIRNAME = ".parts"  # shard tasks' results until merged (ckptboard.core.merge)


class CacheWarning(UserWarning):
    """A cache fragment was unreadable or of another format version and is recomputed (or skipped)."""


def cache_key(file: CheckpointFile, prev: CheckpointFile | None, first: CheckpointFile | None,
              model_fingerprint: str | None, spectral: str = "off") -> dict[str, Any]:
    """The key of ``file``'s fragment: its identity, that of its run's previous and first checkpoints (None for a
    run's first checkpoint), the ``--model`` fingerprint, the ``--spectral`` mode and the format version. Equal keys
    mean equal rows; a fragment made with more spectral work also serves a request for less (:func:`key_covers`)."""
    identity = file.identity()
    return {
        "relpath": file.relpath, "size": identity.size, "mtime_ns": identity.mtime_ns,
        "ino": identity.ino, "ctime_ns": identity.ctime_ns,
        "prev": _neighbour(prev), "first": _neighbour(first),
        "model": model_fingerprint, "spectral": spectral, "format_version": FORMAT_VERSION,
    }


_SPECTRAL_LEVEL = {"off": 0, "default": 1, "full": 2}


def key_covers(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """The stored fragment answers ``wanted``: equal keys, or equal but for a richer ``spectral`` mode (a cache
    summarised with ``--spectral full`` is not recomputed when the app opens it without the option)."""
    if stored == wanted:
        return True
    rest = {k: v for k, v in stored.items() if k != "spectral"}
    return (rest == {k: v for k, v in wanted.items() if k != "spectral"}
            and _SPECTRAL_LEVEL.get(stored.get("spectral"), -1) >= _SPECTRAL_LEVEL.get(wanted.get("spectral"), 99))


def _neighbour(file: CheckpointFile | None) -> list | None:
    if file is None:
        return None
    identity = file.identity()
    return [file.relpath, identity.size, identity.mtime_ns, identity.ino, identity.ctime_ns]


class LookupStatus(StrEnum):
    HIT = "hit"  # the stored key matches: the fragment is current
    MISS = "miss"  # no fragment yet
    STALE = "stale"  # a fragment of another key: the checkpoint (or a neighbour, or the model) changed
    INVALID = "invalid"  # unreadable, or of another format version


@dataclass(frozen=True)
class Lookup:
    """What the cache holds for one checkpoint (``header`` when a fragment was read, ``problem`` when invalid)."""

    status: LookupStatus
    header: Header | None = None
    problem: str = ""

    @property
    def hit(self) -> bool:
        return self.status == LookupStatus.HIT


class StatsCache:
    """The fragments of one ROOT: where they live, which are current, atomic writes, pruning."""

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None):
        self.root = Path(root)
        self.dir = Path(cache_dir) if cache_dir is not None else self.root / CACHE_DIRNAME

    def __repr__(self) -> str:
        return f"StatsCache({str(self.dir)!r})"

    def ensure(self) -> Path:
        """Create the cache folder; :class:`CacheError` (saying to pass ``--cache-dir``) when it cannot be."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f"{TMP_PREFIX}probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise CacheError(
                f"{self.dir}: cannot write the stats cache here ({e.strerror or e}); "
                "pass --cache-dir DIR (cache_dir=...) pointing at a writable folder"
            ) from e
        return self.dir

    @staticmethod
    def stem(relpath: str) -> str:
        """The name of the checkpoint at ``relpath``'s fragment: readable, and distinct by a hash of the path."""
        digest = hashlib.sha1(relpath.encode()).hexdigest()[:16]
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", relpath)[-80:].lstrip("._-") or "root"
        return f"{readable}-{digest}"

    def fragment_path(self, relpath: str) -> Path:
        """The commit record (the ``checkpoints`` file) of the checkpoint at ``relpath`` (POSIX, relative to ROOT)."""
        return table_path(self.dir, COMMIT_TABLE, self.stem(relpath))

    def lookup(self, relpath: str, key: dict[str, Any]) -> Lookup:
        """Compare the stored key of ``relpath``'s fragment with ``key``."""
        path = self.fragment_path(relpath)
        if not path.exists():
            legacy = self.dir / f"{self.stem(relpath)}{_SUFFIX}"
            if legacy.exists():  # format versions 1 and 2 kept every table in one file at the top of the cache
                return Lookup(LookupStatus.INVALID, problem=f"{legacy.name}: a single-file fragment of an older "
                                                            f"format version, this ckptboard reads {FORMAT_VERSION}")
            return Lookup(LookupStatus.MISS)
        try:
            stored = read_header(path)
        except FragmentReadError as e:
            return Lookup(LookupStatus.INVALID, problem=f"{path.name}: {e}")
        return Lookup(LookupStatus.HIT if key_covers(stored.key, key) else LookupStatus.STALE, header=stored)

    def write(self, relpath: str, header: Header, rows: dict[str, list[dict[str, Any]]]) -> Path:
        """Write ``relpath``'s fragment atomically (temp file, fsync, rename) and return its path."""
        path = self.fragment_path(relpath)
        try:
            write_fragment(self.dir, self.stem(relpath), header, rows)
        except OSError as e:
            raise CacheError(f"{path}: cannot write the cache fragment of {relpath} ({e})") from e
        return path

    def fragments(self) -> list[Path]:
        """Every fragment's commit record (temp files excluded)."""
        return commit_files(self.dir)

    def legacy_fragments(self) -> list[Path]:
        """Single-file fragments of format versions 1 and 2 at the top of the cache folder (never read; pruned)."""
        return _parquet_files(self.dir)

    def fingerprint(self, paths: Iterable[Path] | None = None) -> str:
        """Identity of the cache's content: a hash of the format version and every fragment's name, size, mtime."""
        digest = hashlib.sha1(str(FORMAT_VERSION).encode())
        for path in self.fragments() if paths is None else paths:
            try:
                info = path.stat()
            except OSError:
                continue  # pruned meanwhile
            digest.update(f"{path.name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def prune(self, keep: Iterable[str]) -> int:
        """Remove fragments of checkpoints neither in ``keep`` nor on disk, and dead writers' temp files."""
        keep_names = {self.fragment_path(r).name for r in keep}
        removed = 0
        for path in self.fragments():
            if path.name in keep_names:
                continue
            try:
                relpath = read_header(path).key.get("relpath")
            except FragmentReadError:
                relpath = None
            if relpath is not None and (self.root / relpath).exists():
                continue  # another process may be summarising it right now
            remove_fragment(self.dir, path.stem)
            removed += 1
        for path in self.legacy_fragments():
            path.unlink(missing_ok=True)
            removed += 1
        shutil.rmtree(self.dir / _LEGACY_SNAPSHOT, ignore_errors=True)
        if self.dir.is_dir():
            cutoff = time.time() - _STALE_TMP_S
            for parts in (self.dir / PARTS_DIRNAME).glob("*"):  # shard tasks' results a client never merged (it died)
                try:
                    if parts.stat().st_mtime < cutoff:
                        shutil.rmtree(parts, ignore_errors=True)
                except OSError:
                    pass
            for tmp in [*self.dir.glob(f"{TMP_PREFIX}*"), *self.dir.glob(f"*/{TMP_PREFIX}*"),
                        *self.dir.glob(f"*/*/{TMP_PREFIX}*")]:  # the last: compacted files' (core.compact)
                try:
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                except OSError:
                    pass
        return removed


def commit_files(cache_dir: Path) -> list[Path]:
    """Every commit record in the cache folder ``cache_dir`` (temp files excluded), sorted."""
    return _parquet_files(Path(cache_dir) / str(COMMIT_TABLE))


def _parquet_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == _SUFFIX and not p.name.startswith(TMP_PREFIX))


def warn_invalid(problems: list[str], action: str) -> None:
    """One :class:`CacheWarning` for all the fragments found unreadable or of another version."""
    if not problems:
        return
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    warnings.warn(f"{len(problems)} stats cache fragment(s) {action}: {shown}", CacheWarning, stacklevel=3)
