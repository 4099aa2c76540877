"""``torch.distributed.checkpoint`` folders: tensors listed from ``.metadata``, each read chunk by chunk.

Every chunk (and every non-tensor value) is its own ``torch.save`` zip written one after another into a ``.distcp``
file (``FileSystemWriter``, torch 2.x); ``.metadata`` says which file, at which offset, how long. A tensor is
rebuilt on demand from its chunks: each chunk's zip is read through a view of its byte range (pickle by
:mod:`safe_unpickle`, storage record read with one ``readinto``, straight into place for whole-row chunks; no
mmap, so a file truncated meanwhile is an error, not a SIGBUS). :meth:`DcpReader.materialise` assembles one
tensor (a tensor saved as one chunk is its record's buffer, no second copy); the statistics of a tensor of several
chunks never ask for it: they read :meth:`DcpReader.read_chunk` one chunk at a time (:mod:`ckptboard.core.shards`),
and the previous checkpoint's same block with :meth:`DcpReader.read_region`.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from ckptboard.core.errors import ChangedWhileReadError, CorruptCheckpointError
from ckptboard.core.formats.dcp_metadata import DcpChunk, DcpItem, DcpMetadata, read_dcp_metadata
from ckptboard.core.formats.filereader import FileReader
from ckptboard.core.formats.guarded import GuardedFile
from ckptboard.core.formats.materialise import build_tensor, bytes_tensor
from ckptboard.core.formats.safe_unpickle import LazyStorage, LazyTensor, contiguous_stride, load_pickle
from ckptboard.core.formats.sniff import zip_kind

__all__ = ["DcpReader"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")


class _Slice(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``file`` from ``start`` (one chunk's zip)."""

    def __init__(self, file: Any, start: int, length: int):
        super().__init__()
        self._f, self._start, self._length, self._pos = file, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got


class DcpReader(FileReader):
    """One DCP folder: ``items`` from ``.metadata``; :meth:`materialise` assembles one tensor from its chunks."""

    def __init__(self, folder: Path, label: str = ""):
        super().__init__(folder, label)
        self.dcp: DcpMetadata = read_dcp_metadata(folder)
        self._storages: dict[str, LazyStorage] = {}
        self._files: dict[str, GuardedFile] = {}  # .distcp files opened on first read, guarded against changes
        self._spares: list = []  # GuardedFile's spare buffers, shared by all of them
        sizes: dict[str, int] = {}
        for item in self.dcp.items.values():
            for chunk in item.chunks:
                if chunk.file not in sizes:
                    file = folder / chunk.file
                    if not file.is_file():
                        raise CorruptCheckpointError(folder, f"{chunk.file} is missing (it holds {item.fqn})")
                    sizes[chunk.file] = file.stat().st_size
                if chunk.offset + chunk.length > sizes[chunk.file]:
                    raise CorruptCheckpointError(
                        folder, f"{chunk.file} is truncated: {item.fqn} needs bytes up to "
                        f"{chunk.offset + chunk.length}, the file has {sizes[chunk.file]}"
                    )

    def lazy(self, item: DcpItem) -> LazyTensor:
        """The tensor record of ``item`` (no data read): the storage key is the item's key."""
        numel = 1
        for n in item.shape:
            numel *= n
        storage = LazyStorage(item.fqn, item.dtype, numel, reader=self)
        return LazyTensor(storage, 0, item.shape, contiguous_stride(item.shape), item.dtype)

    def read_root(self) -> Any:
        return {fqn: self.lazy(item) for fqn, item in self.dcp.items.items() if item.is_tensor}

    def materialise(self, lazy: LazyTensor, device: torch.device) -> torch.Tensor:
        item = self.dcp.items[lazy.storage.key]
        if len(item.chunks) == 1 and item.chunks[0].sizes == item.shape:
            # one chunk holding the whole tensor: its record's buffer, no second copy
            piece = self._read_chunk(item, item.chunks[0])
            return piece if device.type == "cpu" else piece.to(device)
        out = torch.empty(item.shape, dtype=item.dtype)
        covered = 0
        for chunk in item.chunks:
            index = tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))
            target = out[index]
            # A chunk of whole rows (FSDP's dim-0 shards) is one contiguous range of ``out``: read straight into it.
            piece = self._read_chunk(item, chunk, into=target if target.is_contiguous() else None)
            if piece is not None:
                target.copy_(piece)
                del piece
            covered += target.numel()
        if covered != out.numel():
            raise CorruptCheckpointError(self.path, f"{item.fqn}: its chunks cover {covered} of {out.numel()} elements")
        return out if device.type == "cpu" else out.to(device)

    def chunks(self, lazy: LazyTensor) -> list[DcpChunk]:
        """The chunks of ``lazy``'s tensor in the order of their offsets (the first holds element 0), checked to
        cover the tensor: the order in which per-chunk statistics are merged, whichever task computed them."""
        item = self.dcp.items[lazy.storage.key]
        chunks = sorted(item.chunks, key=lambda c: c.offsets)
        covered = sum(_numel(c.sizes) for c in chunks)
        if covered != _numel(item.shape) or (chunks and any(chunks[0].offsets)):
            raise CorruptCheckpointError(self.path, f"{item.fqn}: its chunks cover {covered} of "
                                                    f"{_numel(item.shape)} elements")
        return chunks

    def read_chunk(self, lazy: LazyTensor, chunk: DcpChunk) -> torch.Tensor:
        """One chunk of ``lazy``'s tensor (shape ``chunk.sizes``), read on its own from its ``.distcp`` file."""
        return self._read_chunk(self.dcp.items[lazy.storage.key], chunk)

    def read_region(self, lazy: LazyTensor, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
        """The block ``[offsets, offsets + sizes)`` of ``lazy``'s tensor, copied from the chunks it overlaps, one
        chunk read at a time (the previous checkpoint's part of a chunk, when the two are chunked differently)."""
        item = self.dcp.items[lazy.storage.key]
        out = torch.empty(sizes, dtype=item.dtype)
        covered = 0
        for chunk in item.chunks:
            lo = [max(o, c) for o, c in zip(offsets, chunk.offsets)]
            hi = [min(o + n, c + m) for o, n, c, m in zip(offsets, sizes, chunk.offsets, chunk.sizes)]
            if any(a >= b for a, b in zip(lo, hi)) and lo:
                continue
            piece = self._read_chunk(item, chunk)
            src = tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, chunk.offsets))
            dst = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offsets))
            out[dst] = piece[src]
            covered += _numel(tuple(b - a for a, b in zip(lo, hi)))
            del piece
        if covered != out.numel():
            raise CorruptCheckpointError(self.path, f"{item.fqn}: its chunks cover {covered} of the {out.numel()} "
                                                    f"elements at {offsets}")
        return out

    def _read_chunk(self, item: DcpItem, chunk: DcpChunk, into: torch.Tensor | None = None) -> torch.Tensor | None:
        """One chunk's tensor: its zip's pickle read safely, its storage record read from the file; with ``into``
        (contiguous, the chunk's size) a contiguous record is read into it instead and None is returned."""
        where = f"{chunk.file} at {chunk.offset}"
        guarded = self._file(chunk.file)  # stays open, guarded against changes, for the reader's lifetime
        f = guarded.file
        view = _Slice(f, chunk.offset, chunk.length)
        try:
            zf = zipfile.ZipFile(view)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CorruptCheckpointError(self.path, f"{item.fqn}: no torch.save zip in {where} ({e})") from e
        with zf:
            kind = zip_kind(zf.namelist())
            if kind is None or kind[0] != "torch":
                raise CorruptCheckpointError(self.path, f"{item.fqn}: {where} holds no torch.save archive")
            storages: dict[str, LazyStorage] = {}

            def hook(dtype: torch.dtype, key: str, location: str, numel: int, view_meta: Any) -> LazyStorage:
                return storages.setdefault(key, LazyStorage(key, dtype, numel, location))

            try:
                pickled = zf.read(f"{kind[1]}/data.pkl")
            except (KeyError, zipfile.BadZipFile, OSError) as e:
                raise CorruptCheckpointError(self.path, f"{item.fqn}: damaged archive in {where} ({e})") from e
            lazy, _ = load_pickle(io.BytesIO(pickled), self.path / chunk.file, hook)
            if not isinstance(lazy, LazyTensor) or lazy.shape != chunk.sizes or lazy.dtype != item.dtype:
                raise CorruptCheckpointError(
                    self.path, f"{item.fqn}: {where} holds no {item.dtype} tensor of size {chunk.sizes}"
                )
            name = f"{kind[1]}/data/{lazy.storage.key}"
            start = self._record_start(f, zf, name, chunk, lazy.storage.nbytes, item)
            contiguous = lazy.stride == contiguous_stride(lazy.shape) and not lazy.flags and lazy.quantizer is None
            if into is not None and isinstance(start, int) and contiguous and lazy.numel:
                _read_into(guarded, start + lazy.offset * lazy.dtype.itemsize, into, item.fqn)
                return None
            nbytes = lazy.storage.nbytes
            raw = start if isinstance(start, torch.Tensor) else guarded.read_at(start, nbytes)
            return build_tensor(raw, lazy, lambda q: q)

    def _record_start(self, f: Any, zf: zipfile.ZipFile, name: str, chunk: DcpChunk, nbytes: int, item: DcpItem):
        """The file offset where the storage record's bytes start, or the bytes themselves (empty or compressed)."""
        try:
            info = zf.getinfo(name)
        except KeyError:
            raise CorruptCheckpointError(self.path, f"{item.fqn}: storage record {name} is missing") from None
        if info.file_size < nbytes:
            raise CorruptCheckpointError(self.path, f"{item.fqn}: storage record {name} is short")
        if not nbytes:
            return bytes_tensor(b"", 0, 0)
        if info.compress_type != zipfile.ZIP_STORED:
            return bytes_tensor(bytearray(zf.read(info)), 0, nbytes)
        f.seek(chunk.offset + info.header_offset)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        start = chunk.offset + info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if signature != b"PK\x03\x04" or start + nbytes > chunk.offset + chunk.length:
            raise CorruptCheckpointError(self.path, f"{item.fqn}: storage record {name} lies outside its chunk")
        return start

    def _file(self, name: str) -> GuardedFile:
        if name not in self._files:
            guarded = GuardedFile(self.path / name)
            # One pool of spare buffers for all the folder's files (as one torch.save file has), not two per file:
            # 8 shards would otherwise keep up to 16 tensor-sized buffers alive.
            guarded._spares = self._spares
            self._files[name] = guarded
        return self._files[name]

    def close(self) -> None:
        for guarded in self._files.values():
            guarded.close()
        self._files.clear()


def _read_into(guarded: GuardedFile, offset: int, into: torch.Tensor, what: str) -> None:
    """``into``'s bytes from ``offset`` of the file, read straight into it (``pread``); a short read or a file
    changed meanwhile is a :class:`ChangedWhileReadError`."""
    with memoryview(into.view(-1).view(torch.uint8).numpy()) as view:
        done = 0
        while done < len(view):
            n = os.preadv(guarded.file.fileno(), [view[done:]], offset + done)
            if n == 0:
                raise ChangedWhileReadError(guarded.path, f"{what}: the file ended inside its storage record")
            done += n
    guarded.check()



def _numel(shape: tuple[int, ...]) -> int:
    numel = 1
    for n in shape:
        numel *= n
    return numel
