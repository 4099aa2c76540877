"""Recognise a checkpoint file by its first bytes, never by its extension."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ckptboard.core.records import StrEnum

__all__ = ["Signature", "sniff", "zip_kind", "is_checkpoint_file", "LEGACY_MAGIC"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of every legacy (non-zip) torch.save file
_LEGACY_MAGIC_PICKLED = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")  # LONG1 opcode, 10 bytes
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class Signature(StrEnum):
    EMPTY = "empty"
    ZIP = "zip"
    TORCH_LEGACY = "torch-legacy"
    PICKLE = "pickle"  # a pickle stream without torch.save's magic number
    SAFETENSORS = "safetensors"
    UNKNOWN = "unknown"


def sniff(path: Path) -> Signature:
    """What the file's first bytes say it is (reads at most 64 bytes)."""
    with open(path, "rb") as f:
        head = f.read(64)
        size = f.seek(0, 2)
    if not head:
        return Signature.EMPTY
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return Signature.ZIP
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return Signature.TORCH_LEGACY if _LEGACY_MAGIC_PICKLED in head[:32] else Signature.PICKLE
    if len(head) > 8:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= min(size - 8, _MAX_SAFETENSORS_HEADER) and head[8:9] == b"{":
            return Signature.SAFETENSORS
    return Signature.UNKNOWN


def zip_kind(names: list[str]) -> tuple[str, str] | None:
    """``("torch", prefix)`` or ``("torchscript", prefix)`` for a torch archive's member names, else None."""
    for name in names:
        prefix, _, last = name.rpartition("/")
        if last == "data.pkl" and prefix and "/" not in prefix:
            script = f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names)
            return ("torchscript" if script else "torch"), prefix
    return None


def is_checkpoint_file(path: Path) -> bool:
    """Cheap test for discovery: a torch archive, a legacy torch.save file or a safetensors file.

    A zip that opens but holds no ``data.pkl`` is foreign; one that does not open (truncated, half written) counts,
    so that opening it reports the damage instead of the file silently missing from its run.
    """
    try:
        signature = sniff(path)
        if signature is Signature.ZIP:
            with zipfile.ZipFile(path) as zf:
                return zip_kind(zf.namelist()) is not None
        return signature in (Signature.TORCH_LEGACY, Signature.SAFETENSORS)
    except zipfile.BadZipFile:
        return True
    except (OSError, ValueError):
        return False
