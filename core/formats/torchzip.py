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


_GAP = 64 << 10  # bytes between two stored records that one read still spans (cheaper than another read)
_RUN = 64 << 20  # bytes one read of neighbouring records may span
_EXTRA_SLACK = 256  # bytes allowed for a local header's extra field when planning a read (torch pads to 64)


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

    def materialise_many(self, lazies: list[LazyTensor], device: torch.device) -> list[torch.Tensor]:
        """Several tensors as :meth:`materialise` gives them; stored records less than ``_GAP`` bytes apart are read
        together (local headers included, up to ``_RUN`` bytes a read), each storage once however many tensors view
        it. Anything else (a compressed or large record, a header that does not fit) is read as by :meth:`materialise`."""
        records: dict[str, torch.Tensor | None] = {}
        planned: list[tuple[int, int, zipfile.ZipInfo, LazyStorage]] = []  # (header offset, end bound, info, storage)
        for lazy in lazies:
            storage = lazy.storage
            if storage.key in records:
                continue
            records[storage.key] = None
            info = self._zf.getinfo(f"{self._prefix}/data/{storage.key}")
            if info.compress_type == zipfile.ZIP_STORED and 0 < storage.nbytes <= _RUN:
                # the local header's extra field (torch pads data to 64 bytes) is read with it: allow for it
                bound = info.header_offset + _LOCAL_HEADER.size + len(info.orig_filename) + _EXTRA_SLACK + storage.nbytes
                planned.append((info.header_offset, min(bound, self._guarded.size), info, storage))
        planned.sort(key=lambda p: p[0])
        run: list[tuple[int, int, zipfile.ZipInfo, LazyStorage]] = []
        for item in planned:
            if run and (item[0] - run[-1][1] > _GAP or item[1] - run[0][0] > _RUN):
                self._read_records(run, records)
                run = []
            run.append(item)
        if run:
            self._read_records(run, records)
        out = []
        for lazy in lazies:
            raw = records[lazy.storage.key]
            if raw is None:
                out.append(self.materialise(lazy, device))
                continue
            tensor = build_tensor(raw, lazy, lambda q: self.materialise(q, torch.device("cpu")))
            out.append(tensor if device.type == "cpu" else tensor.to(device))
        return out

    def _read_records(self, run: list[tuple[int, int, zipfile.ZipInfo, LazyStorage]], records: dict) -> None:
        """One read of neighbouring stored records; each record whose local header checks out gets a copy of its
        bytes of its own (a storage of its own, as :meth:`_record` gives); the others stay None."""
        start = run[0][0]
        end = max(item[1] for item in run)
        buffer = self._guarded.read_at(start, end - start).numpy()
        for header_offset, _, info, storage in run:
            at = header_offset - start
            if at + _LOCAL_HEADER.size > buffer.size:
                continue
            signature, name_len, extra_len = _LOCAL_HEADER.unpack(buffer[at:at + _LOCAL_HEADER.size].tobytes())
            data = at + _LOCAL_HEADER.size + name_len + extra_len
            if signature != b"PK\x03\x04" or data + storage.nbytes > buffer.size:
                continue  # read alone, by _record, which says what is wrong with it
            records[storage.key] = torch.from_numpy(buffer[data:data + storage.nbytes].copy())

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
