"""The legacy (non-zip) ``torch.save`` format: five pickles, then each storage as an int64 count and raw bytes.

Listing reads the pickles and hops over the storages (8 bytes each); a tensor is materialised by reading its
storage's byte range with ``pread`` (:mod:`~ckptboard.core.formats.guarded`), one storage at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ckptboard.core.formats.filereader import FileReader
from ckptboard.core.formats.materialise import build_tensor
from ckptboard.core.formats.sniff import LEGACY_MAGIC
from ckptboard.core.errors import CheckpointError, CorruptCheckpointError, NotACheckpointError
from ckptboard.core.formats.guarded import GuardedFile
from ckptboard.core.formats.safe_unpickle import LazyStorage, LazyTensor, short_repr, load_pickle

__all__ = ["LegacyReader"]

_PROTOCOL_VERSION = 1001


class LegacyReader(FileReader):
    """One legacy ``torch.save`` file."""

    def __init__(self, path: Path, label: str = ""):
        super().__init__(path, label)
        self.notes.append("legacy torch.save format (not a zip): no mmap; each storage is read into memory when loaded")
        self._guarded = GuardedFile(path)
        self._file = self._guarded.file
        self._roots: dict[str, LazyStorage] = {}
        self._views: dict[str, LazyStorage] = {}
        self._offsets: dict[str, int] = {}  # root key -> byte offset of its data

    def read_root(self) -> Any:
        """The unpickled object, with :class:`LazyTensor` records; locates every storage's bytes."""
        f = self._file
        magic, _ = load_pickle(f, self.path)
        if magic != LEGACY_MAGIC:
            raise NotACheckpointError(self.path, "a pickle without torch.save's magic number")
        protocol, _ = load_pickle(f, self.path)
        if protocol != _PROTOCOL_VERSION:
            raise CorruptCheckpointError(self.path, f"unknown legacy protocol version {short_repr(protocol)}")
        sys_info, _ = load_pickle(f, self.path)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointError(self.path, "saved on a big-endian machine: not supported")
        root, self.skipped_globals = load_pickle(f, self.path, self._storage)
        keys, _ = load_pickle(f, self.path)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or set(keys) != set(self._roots):
            raise CorruptCheckpointError(self.path, "the storage key list does not match the storages the pickle uses")
        self._locate(keys, f.tell())
        return root

    def materialise(self, lazy: LazyTensor, device: torch.device) -> torch.Tensor:
        """One tensor, read from its storage's byte range into fresh memory."""
        key = lazy.storage.key
        root = self._roots[key]
        raw = self._guarded.read_at(self._offsets[key], root.nbytes)
        tensor = build_tensor(raw, lazy, lambda q: self.materialise(q, torch.device("cpu")))
        return tensor if device.type == "cpu" else tensor.to(device)

    def close(self) -> None:
        self._guarded.close()

    def _storage(self, dtype: torch.dtype, key: str, location: str, numel: int, view: Any) -> LazyStorage:
        root = self._roots.setdefault(key, LazyStorage(key, dtype, numel, location, reader=self))
        if view is None:
            return root
        view_key, offset, size = view if isinstance(view, tuple) and len(view) == 3 else (None, -1, -1)
        if (not isinstance(view_key, str) or type(offset) is not int or type(size) is not int or offset < 0
                or size < 0 or offset + size > root.numel):  # fmt: skip
            raise CorruptCheckpointError(self.path, f"storage view {short_repr(view)} of {key} is out of range")
        return self._views.setdefault(view_key, LazyStorage(key, dtype, size, location, offset, reader=self))

    def _locate(self, keys: list[str], offset: int) -> None:
        size = self._file.seek(0, 2)
        for key in keys:
            self._file.seek(offset)
            count = int.from_bytes(self._file.read(8), "little", signed=True)
            nbytes = count * self._roots[key].dtype.itemsize
            if count != self._roots[key].numel or offset + 8 + nbytes > size:
                raise CorruptCheckpointError(self.path, f"storage {key} is truncated or does not match the pickle")
            self._offsets[key] = offset + 8
            offset += 8 + nbytes
