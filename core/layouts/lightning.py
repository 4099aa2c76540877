"""PyTorch Lightning beside its ``.ckpt`` files: ``last.ckpt`` (or a ``best`` copy) as an alias of the checkpoint it
copies, and CSVLogger's ``metrics.csv`` (``version_N/`` beside ``checkpoints/``) as training scalars.

    lightning_logs/version_0/   metrics.csv  hparams.yaml
                                checkpoints/   epoch=0-step=50.ckpt  epoch=1-step=100.ckpt  last.ckpt (alias)

An alias has no step in its name, the same step in its metadata as a named checkpoint of the run, and the same tensor
bytes: the CRC-32 and size of every storage record of its zip (read from the zip directory, no data read) match.
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from pathlib import Path

__all__ = ["find_aliases", "tensor_fingerprint"]


def tensor_fingerprint(path: Path) -> tuple | None:
    """The sorted ``(crc32, size)`` of a torch zip's storage records, or None (not a zip, damaged, no tensors)."""
    try:
        with zipfile.ZipFile(path) as zf:
            records = sorted(
                (info.CRC, info.file_size) for info in zf.infolist() if info.filename.split("/")[-2:-1] == ["data"]
            )
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return tuple(records) or None


def _metadata_step(path: Path) -> int | None:
    from ckptboard.core.errors import CheckpointError
    from ckptboard.core.reader import open_checkpoint
    from ckptboard.core.records import StepSource

    try:
        with open_checkpoint(path) as ckpt:
            return ckpt.step if ckpt.step_source not in (StepSource.FILENAME, StepSource.NONE) else None
    except CheckpointError:
        return None


def find_aliases(checkpoints: list[tuple[str, Path, int | None]]) -> dict[str, str]:
    """``{relpath of alias: relpath of the original}`` among one run's ``(relpath, path, step from name)``."""
    stepless = [(rel, path) for rel, path, step in checkpoints if step is None and path.is_file()]
    if not stepless:
        return {}
    by_print: dict[tuple, list[tuple[str, int]]] = defaultdict(list)
    for rel, path, step in checkpoints:
        if step is not None and path.is_file():
            fingerprint = tensor_fingerprint(path)
            if fingerprint is not None:
                by_print[fingerprint].append((rel, step))
    aliases = {}
    for rel, path in stepless:
        originals = by_print.get(tensor_fingerprint(path) or ())
        if not originals:
            continue
        step = _metadata_step(path)
        original = next((o for o, s in originals if s == step), None)
        if step is not None and original is not None:
            aliases[rel] = original
    return aliases
