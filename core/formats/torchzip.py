"""``torch.save`` zip archives: list from ``data.pkl`` alone; map one storage record at a time (mmap).

Storage records are written uncompressed (64-byte aligned), so a record is a plain byte range of the file; a
compressed record (another writer) is read whole instead.
"""

from __future__ import annotations

import io
import mmap
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from ckptboard.core.formats.filereader import FileReader
from ckptboard.core.formats.materialise import build_tensor, bytes_tensor
from ckptboard.core.formats.sniff import zip_kind
from ckptboard.core.errors import CheckpointError, CorruptCheckpointError, NotACheckpointError
from ckptboard.core.formats.safe_unpickle import LazyStorage, LazyTensor, load_pickle

__all__ = ["TorchZipReader"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (version … sizes), name length, extra length


class TorchZipReader(FileReader):
    """One torch zip archive; ``is_torchscript`` archives are refused by the caller unless trusted."""

    def __init__(self, path: Path, label: str = ""):
        super().__init__(path, label)
        self._file = open(path, "rb")
        self._storages: dict[str, LazyStorage] = {}
        try:
            self._zf = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            self._file.close()
            raise CorruptCheckpointError(path, f"truncated or damaged zip archive ({e})") from e
        kind = zip_kind(self._zf.namelist())
        if kind is None:
            self.close()
            raise NotACheckpointError(path, "a zip archive without data.pkl: not a torch.save checkpoint")
        self.is_torchscript = kind[0] == "torchscript"
        self._prefix = kind[1]

    def read_root(self) -> Any:
        """The unpickled ``data.pkl``: containers holding :class:`LazyTensor` records."""
        if self._read_member("byteorder", default=b"little").strip() != b"little":
            raise CheckpointError(self.path, "saved on a big-endian machine: not supported")
        data = self._read_member("data.pkl")
        root, self.skipped_globals = load_pickle(io.BytesIO(data), self.path, self._storage)
        return root

    def materialise(self, lazy: LazyTensor, device: torch.device) -> torch.Tensor:
        """One tensor: a view of the mmapped record on CPU, copied to ``device`` otherwise."""
        tensor = build_tensor(self._record(lazy.storage), lazy, lambda q: self.materialise(q, torch.device("cpu")))
        return tensor if device.type == "cpu" else tensor.to(device)

    def close(self) -> None:
        self._zf.close()
        self._file.close()

    def _read_member(self, name: str, default: bytes | None = None) -> bytes:
        try:
            return self._zf.read(f"{self._prefix}/{name}")
        except KeyError:
            if default is not None:
                return default
            raise CorruptCheckpointError(self.path, f"archive member {self._prefix}/{name} is missing") from None
        except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as e:
            raise CorruptCheckpointError(self.path, f"archive member {self._prefix}/{name} is damaged ({e})") from e

    def _storage(self, dtype: torch.dtype, key: str, location: str, numel: int, view: Any) -> LazyStorage:
        if key not in self._storages:
            storage = LazyStorage(key, dtype, numel, location, reader=self)
            name = f"{self._prefix}/data/{key}"
            try:
                info = self._zf.getinfo(name)
            except KeyError:
                raise CorruptCheckpointError(self.path, f"storage record {name} is missing") from None
            if info.file_size < storage.nbytes:
                raise CorruptCheckpointError(
                    self.path, f"storage record {name} holds {info.file_size} bytes, the pickle needs {storage.nbytes}"
                )
            self._storages[key] = storage
        return self._storages[key]

    def _record(self, storage: LazyStorage) -> torch.Tensor:
        info = self._zf.getinfo(f"{self._prefix}/data/{storage.key}")
        if info.compress_type != zipfile.ZIP_STORED:
            return bytes_tensor(bytearray(self._zf.read(info)), 0, storage.nbytes)
        self._file.seek(info.header_offset)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(self._file.read(_LOCAL_HEADER.size))
        offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if signature != b"PK\x03\x04" or offset + storage.nbytes > self._file.seek(0, 2):
            raise CorruptCheckpointError(self.path, f"storage record {info.filename} lies outside the file")
        if not storage.nbytes:
            return bytes_tensor(b"", 0, 0)
        # One private copy-on-write mapping per load: a caller writing into its tensor changes neither the file
        # nor later loads. The tensor holds the mmap; freeing the tensor unmaps it (never mmap.close() here).
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(self._file.fileno(), offset + storage.nbytes - start, access=mmap.ACCESS_COPY, offset=start)
        return bytes_tensor(mapped, offset - start, storage.nbytes)
