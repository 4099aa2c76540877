"""``torch.save`` zip archives: list from ``data.pkl`` alone; read one storage record at a time.

Storage records are written uncompressed (64-byte aligned), so a record is a plain byte range of the file, read
with ``pread`` (:mod:`~ckptboard.core.formats.guarded`: a file truncated meanwhile is an error, not a SIGBUS). A
compressed member (another writer) is read through :mod:`zipfile`, but never inflated past a small multiple of
the archive's size: a zip bomb is refused from its declared size before it inflates.
"""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ckptboard.core.errors import CheckpointError, CorruptCheckpointError, NotACheckpointError
from ckptboard.core.formats.filereader import FileReader
from ckptboard.core.formats.guarded import GuardedFile
from ckptboard.core.formats.materialise import build_tensor, bytes_tensor
from ckptboard.core.formats.safe_unpickle import LazyStorage, LazyTensor, contiguous_stride, load_pickle
from ckptboard.core.formats.sniff import zip_kind

__all__ = ["TorchZipReader", "inflate_limit"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (version … sizes), name length, extra length
# A compressed member may inflate to this many times the whole archive (at least _INFLATE_FLOOR, at most _CAP).
_INFLATE_RATIO, _INFLATE_FLOOR, _INFLATE_CAP = 32, 32 << 20, 1 << 30
# What zipfile, zlib, lzma and struct raise on damaged or unsupported archives (encryption is a RuntimeError).
_ZIP_FAILURES = (
    zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, zlib.error, lzma.LZMAError,
    EOFError, struct.error, UnicodeDecodeError, ValueError, OSError, OverflowError,
)  # fmt: skip


def inflate_limit(archive_size: int) -> int:
    """The most bytes a compressed member of an archive of ``archive_size`` bytes may inflate to."""
    return min(_INFLATE_CAP, max(_INFLATE_FLOOR, _INFLATE_RATIO * archive_size))


class TorchZipReader(FileReader):
    """One torch zip archive; ``is_torchscript`` archives are refused by the caller unless trusted."""

    def __init__(self, path: Path, label: str = ""):
        super().__init__(path, label)
        self._guarded = GuardedFile(path)
        self._storages: dict[str, LazyStorage] = {}
        try:
            with self._failures("zip archive"):
                self._zf = zipfile.ZipFile(self._guarded.file)
        except BaseException:
            self._guarded.close()
            raise
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
        root, self.skipped_globals = load_pickle(io.BytesIO(data), self.path, self._storage, len(data))
        return root

    def materialise(self, lazy: LazyTensor, device: torch.device) -> torch.Tensor:
        """One tensor, read into memory of its own (writes to it never reach the file)."""
        tensor = build_tensor(self._record(lazy.storage), lazy, lambda q: self.materialise(q, torch.device("cpu")))
        return tensor if device.type == "cpu" else tensor.to(device)

    def read_elements(self, lazy: LazyTensor, start: int, count: int) -> torch.Tensor:
        """Elements ``[start, start + count)`` of a contiguous, unquantised ``lazy`` as a 1-D tensor, read on their own
        from the file (a ZeRO-3 partition's slice of a flat group), not the whole storage record."""
        storage = lazy.storage
        if lazy.quantizer is not None or lazy.flags or tuple(lazy.stride) != contiguous_stride(lazy.shape):
            raise CorruptCheckpointError(self.path, f"storage record {storage.key}: not a contiguous tensor, "
                                                    "its elements cannot be read as a range")
        if start < 0 or count < 0 or start + count > lazy.numel:
            raise CorruptCheckpointError(self.path, f"storage record {storage.key}: elements {start}..{start + count} "
                                                    f"of a tensor of {lazy.numel}")
        itemsize = lazy.dtype.itemsize
        info = self._zf.getinfo(f"{self._prefix}/data/{storage.key}")
        if info.compress_type != zipfile.ZIP_STORED or not count:
            return self.materialise(lazy, torch.device("cpu")).reshape(-1)[start : start + count].clone()
        offset = self._stored_offset(storage, info) + (lazy.offset + start) * itemsize
        raw = self._guarded.read_at(offset, count * itemsize)
        return torch.empty(0, dtype=lazy.dtype).set_(raw.untyped_storage(), 0, (count,), (1,))

    def close(self) -> None:
        if hasattr(self, "_zf"):
            self._zf.close()
        self._guarded.close()

    @contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        """Library failures while reading ``what`` as one CheckpointError (changed-while-read when it changed)."""
        try:
            yield
        except CheckpointError:
            raise
        except _ZIP_FAILURES as e:
            self._guarded.check()
            text = " ".join(str(e).split())[:200]
            problem = f"truncated or damaged {what}, or a zip feature ckptboard does not read"
            raise CorruptCheckpointError(self.path, f"{problem} ({type(e).__name__}: {text})") from e

    def _read_member(self, name: str, default: bytes | None = None) -> bytes:
        full = f"{self._prefix}/{name}"
        try:
            info = self._zf.getinfo(full)
        except KeyError:
            if default is not None:
                return default
            raise CorruptCheckpointError(self.path, f"archive member {full} is missing") from None
        return bytes(self._inflate(info, f"archive member {full}", info.file_size))

    def _inflate(self, info: zipfile.ZipInfo, what: str, nbytes: int) -> bytearray:
        """The first ``nbytes`` of a member through zipfile, refused when its declared size is a bomb's."""
        limit = self._guarded.size if info.compress_type == zipfile.ZIP_STORED else inflate_limit(self._guarded.size)
        if info.file_size > limit:
            raise CorruptCheckpointError(
                self.path, f"{what} inflates to {info.file_size} bytes, more than the {limit} allowed for an archive "
                f"of {self._guarded.size} bytes (a zip bomb?)",
            )  # fmt: skip
        buffer = bytearray(min(nbytes, info.file_size))
        with self._failures(what), self._zf.open(info) as member:
            got = member.readinto(buffer)
        if got != len(buffer):
            self._guarded.check()
            raise CorruptCheckpointError(self.path, f"{what} is truncated ({got} of {len(buffer)} bytes)")
        return buffer

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
            data = self._inflate(info, f"storage record {info.filename}", storage.nbytes)
            return bytes_tensor(data, 0, storage.nbytes)
        if not storage.nbytes:
            self._stored_offset(storage, info)
            return bytes_tensor(b"", 0, 0)
        return self._guarded.read_at(self._stored_offset(storage, info), storage.nbytes)

    def _stored_offset(self, storage: LazyStorage, info: zipfile.ZipInfo) -> int:
        """Where an uncompressed storage record's bytes start in the file, checked to lie inside it."""
        file_size = self._guarded.size
        if info.header_offset + _LOCAL_HEADER.size > file_size:
            raise CorruptCheckpointError(self.path, f"storage record {info.filename} lies outside the file")
        header = self._guarded.read_small(info.header_offset, _LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            self._guarded.check()
            raise CorruptCheckpointError(self.path, f"storage record {info.filename} lies outside the file")
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
        offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if signature != b"PK\x03\x04" or offset + storage.nbytes > file_size:
            raise CorruptCheckpointError(self.path, f"storage record {info.filename} lies outside the file")
        return offset
