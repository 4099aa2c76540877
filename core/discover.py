"""Find runs the way TensorBoard reads a logdir: every folder holding checkpoints is a run, the root too.

A checkpoint is a file whose first bytes say torch.save zip (with ``data.pkl``, or damaged so that it cannot be
told), legacy torch.save or safetensors, or a folder that a training layout recognises (:mod:`ckptboard.core.layouts`:
Hugging Face, Trainer ``checkpoint-N/``, accelerate, PEFT, DCP …); a checkpoint folder's files are not listed again,
so a folder of checkpoint folders is one run. A stepless copy of another checkpoint of its run with the same step and
the same tensor bytes (Lightning's ``last.ckpt``) is an alias: kept in ``Run.aliases``, not listed as a checkpoint.
Other files are ignored, and so are hidden folders (``.ckptboard/``, ``.git/``) and ``__pycache__``. Each run's
checkpoints are ordered by the step in their name, then modification time, then path; runs by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ckptboard.core.formats.sniff import is_checkpoint_file
from ckptboard.core.errors import UsageError
from ckptboard.core.layouts import checkpoint_files, detect
from ckptboard.core.layouts.lightning import find_aliases
from ckptboard.core.steps import step_from_name

__all__ = ["discover", "Run", "CheckpointFile", "FileIdentity", "file_identity"]


@dataclass(frozen=True)
class FileIdentity:
    """What says a checkpoint changed: its size, mtime_ns, inode and ctime_ns; of a checkpoint folder, the files its
    layout names (sizes and inodes summed, the latest times). The cache keys fragments by it and a task checks it
    before and after reading.

    Size and mtime alone miss a different file put in place with its mtime restored (``touch -r``, ``rsync -t``):
    that is a new inode (a copy renamed into place) or a new ctime (written in place), and no user can set a ctime.
    Both come from the one ``stat`` already made, so the check reads no byte of the file; the price is that a copied
    or restored folder (new inodes) is summarised again.
    """

    size: int
    mtime_ns: int
    ino: int = 0
    ctime_ns: int = 0


def file_identity(path: Path, *, missing_ok: bool = False) -> FileIdentity:
    """``path``'s identity now; a file gone since listing raises ``FileNotFoundError`` unless ``missing_ok``."""
    files = checkpoint_files(path)
    stats = []
    for f in files:
        try:
            stats.append(f.stat())
        except FileNotFoundError:
            if not missing_ok:
                raise
    return FileIdentity(sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0),
                        sum(s.st_ino for s in stats), max((s.st_ctime_ns for s in stats), default=0))


@dataclass
class CheckpointFile:
    """One checkpoint found on disk (not opened)."""

    path: Path
    relpath: str  # relative to the discovery root, POSIX separators
    size: int  # bytes; for a Hugging Face folder, its index and weight files summed
    mtime_ns: int  # for a folder, the latest of those files
    step_hint: int | None  # from the file or folder name
    ino: int = 0  # for a folder, its files' inodes summed
    ctime_ns: int = 0  # for a folder, the latest of those files
    alias_of: str | None = None  # relpath of the checkpoint this one is a copy of (same step, same tensor bytes)

    def identity(self) -> FileIdentity:
        """Its identity as listed (what the cache key and the task's change check compare)."""
        return FileIdentity(self.size, self.mtime_ns, self.ino, self.ctime_ns)


@dataclass
class Run:
    """A folder holding checkpoints."""

    name: str  # relative to the discovery root, POSIX, "." for the root itself
    path: Path
    checkpoints: list[CheckpointFile] = field(default_factory=list)
    aliases: list[CheckpointFile] = field(default_factory=list)  # copies of listed checkpoints, not listed


def discover(root: str | Path) -> list[Run]:
    """Every run under ``root`` (a folder; a single checkpoint file gives one run of one checkpoint)."""
    root = Path(root)
    if not root.exists():
        raise UsageError(f"{root}: no such folder")
    if root.is_file() or detect(root) is not None:
        return _single(root)
    runs: dict[str, Run] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        found = [here / d for d in dirs if detect(here / d) is not None]
        dirs[:] = [d for d in dirs if here / d not in found]
        found += [here / f for f in sorted(files) if not f.startswith(".") and is_checkpoint_file(here / f)]
        if found:
            name = here.relative_to(root).as_posix()
            runs[name] = _run(name, here, sorted((_entry(p, root) for p in found), key=_order))
    return [runs[name] for name in sorted(runs)]


def _single(path: Path) -> list[Run]:
    if path.is_file() and not is_checkpoint_file(path):
        return []
    return [Run(".", path.parent, [_entry(path, path.parent)])]


def _run(name: str, path: Path, checkpoints: list[CheckpointFile]) -> Run:
    aliases = find_aliases([(c.relpath, c.path, c.step_hint) for c in checkpoints])
    for ckpt in checkpoints:
        ckpt.alias_of = aliases.get(ckpt.relpath)
    return Run(name, path, [c for c in checkpoints if not c.alias_of], [c for c in checkpoints if c.alias_of])


def _entry(path: Path, root: Path) -> CheckpointFile:
    identity = file_identity(path, missing_ok=True)  # removed meanwhile: listed, and its task reports it
    return CheckpointFile(
        path=path,
        relpath=path.relative_to(root).as_posix(),
        size=identity.size,
        mtime_ns=identity.mtime_ns,
        step_hint=step_from_name(path.name)[0],
        ino=identity.ino,
        ctime_ns=identity.ctime_ns,
    )


def _order(ckpt: CheckpointFile) -> tuple:
    return (ckpt.step_hint is None, ckpt.step_hint or 0, ckpt.mtime_ns, ckpt.relpath)
