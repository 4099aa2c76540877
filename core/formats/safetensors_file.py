"""``.safetensors`` files: the JSON header lists every tensor; each tensor is one byte range, read with ``pread``.

Not ``safe_open``: it maps the file, and a mapped file truncated while read kills the process (SIGBUS).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from math import prod
from pathlib import Path
from typing import Any

import torch
from ckptboard.core.formats.filereader import FileReader
from ckptboard.core.formats.guarded import GuardedFile
from ckptboard.core.formats.sniff import _MAX_SAFETENSORS_HEADER
from ckptboard.core.errors import CheckpointError, CorruptCheckpointError
from ckptboard.core.formats.safe_unpickle import LazyStorage, LazyTensor, contiguous_stride

__all__ = ["SafetensorsReader", "SAFETENSORS_DTYPES", "flat_metadata"]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "C64": torch.complex64,
}  # fmt: skip


_GAP = 64 << 10  # bytes between two tensors' ranges that one read still spans (cheaper than another read)
_RUN = 64 << 20  # bytes one read of neighbouring tensors may span


class SafetensorsReader(FileReader):
    """One ``.safetensors`` file; the header is parsed here so that damage is reported before any read."""

    def __init__(self, path: Path, label: str = ""):
        super().__init__(path, label)
        self._guarded: GuardedFile | None = None
        self._begins: dict[str, int] = {}  # tensor name -> file offset of its bytes

    def read_root(self) -> OrderedDict[str, LazyTensor]:
        """Every tensor in file (data offset) order."""
        header, data_size = self._header()
        entries = []
        for name, entry in header.items():
            if name == "__metadata__":
                self.metadata = flat_metadata(entry)
                continue
            entries.append((*self._entry(name, entry, data_size), name))
        data_start = self._size - data_size
        self._begins = {name: data_start + begin for begin, _, name in entries}
        entries.sort(key=lambda item: item[0])
        return OrderedDict((name, lazy) for _, lazy, name in entries)

    def materialise(self, lazy: LazyTensor, device: torch.device) -> torch.Tensor:
        """One tensor, read into memory of its own (little-endian, as safetensors stores it)."""
        if self._guarded is None:
            self._guarded = GuardedFile(self.path)
        raw = self._guarded.read_at(self._begins[lazy.storage.key], lazy.nbytes)
        tensor = raw.view(lazy.dtype).reshape(lazy.shape) if lazy.nbytes else torch.empty(lazy.shape, dtype=lazy.dtype)
        return tensor if device.type == "cpu" else tensor.to(device)

    def materialise_many(self, lazies: list[LazyTensor], device: torch.device) -> list[torch.Tensor]:
        """Several tensors as :meth:`materialise` gives them; byte ranges less than ``_GAP`` apart are read
        together (up to ``_RUN`` bytes a read), so that thousands of small tensors cost a few reads."""
        if self._guarded is None:
            self._guarded = GuardedFile(self.path)
        order = sorted(range(len(lazies)), key=lambda i: self._begins[lazies[i].storage.key])
        out: list[torch.Tensor | None] = [None] * len(lazies)
        run: list[int] = []
        start = end = 0
        for i in order:
            begin = self._begins[lazies[i].storage.key]
            stop = begin + lazies[i].nbytes
            if run and (begin - end > _GAP or max(end, stop) - start > _RUN):
                self._read_run(lazies, run, start, end, out)
                run = []
            if not run:
                start = end = begin
            run.append(i)
            end = max(end, stop)
        if run:
            self._read_run(lazies, run, start, end, out)
        return [t if device.type == "cpu" else t.to(device) for t in out]  # type: ignore[union-attr]

    def _read_run(self, lazies: list[LazyTensor], run: list[int], start: int, end: int, out: list) -> None:
        raw = self._guarded.read_at(start, end - start)  # type: ignore[union-attr]
        for i in run:
            lazy = lazies[i]
            at = self._begins[lazy.storage.key] - start
            piece = raw[at:at + lazy.nbytes]
            if at % lazy.dtype.itemsize:
                piece = piece.clone()  # a view as a wider dtype must start on its alignment
            out[i] = piece.view(lazy.dtype).reshape(lazy.shape) if lazy.nbytes else torch.empty(lazy.shape,
                                                                                                 dtype=lazy.dtype)

    def close(self) -> None:
        if self._guarded is not None:
            self._guarded.close()
            self._guarded = None

    def _header(self) -> tuple[dict[str, Any], int]:
        with open(self.path, "rb") as f:
            head = f.read(8)
            size = f.seek(0, 2)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(size - 8, _MAX_SAFETENSORS_HEADER):
                raise CorruptCheckpointError(self.path, f"safetensors header length {n} does not fit the file")
            f.seek(8)
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CorruptCheckpointError(self.path, f"safetensors header is not valid JSON ({e})") from e
            except RecursionError as e:
                raise CorruptCheckpointError(self.path, "safetensors header nests too deeply to parse") from e
        if not isinstance(header, dict):
            raise CorruptCheckpointError(self.path, "safetensors header is not a JSON object")
        self._size = size
        return header, size - 8 - n

    def _entry(self, name: str, entry: Any, data_size: int) -> tuple[int, LazyTensor]:
        """``(byte offset, record)`` of one header entry, checked against the file's size."""
        try:
            code, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if not isinstance(code, str):
                raise TypeError("dtype is not a string")
            if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)):
                raise ValueError("negative or non-integer size")
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptCheckpointError(self.path, f"safetensors header entry for {name} is malformed ({e})") from e
        if code not in SAFETENSORS_DTYPES:
            raise CheckpointError(self.path, f"tensor {name} has dtype {code}, which ckptboard cannot read")
        dtype = SAFETENSORS_DTYPES[code]
        numel = prod(shape)
        if end - begin != numel * dtype.itemsize or end > data_size:
            problem = "is truncated" if end > data_size else "has a byte range that does not match its shape"
            raise CorruptCheckpointError(self.path, f"tensor {name} {problem} (bytes {begin}..{end})")
        storage = LazyStorage(name, dtype, numel, "cpu", reader=self)
        return begin, LazyTensor(storage, 0, shape, contiguous_stride(shape), dtype)


def flat_metadata(entry: Any) -> dict[str, Any]:
    """A JSON metadata map with scalar values only (safetensors' is str to str); nested values become a tag."""
    if not isinstance(entry, dict):
        return {}
    plain = (str, int, float, bool, type(None))
    return {str(k): v if isinstance(v, plain) else f"<{type(v).__name__}>" for k, v in entry.items()}
