"""DeepSpeed ZeRO-3 weights: each trainable parameter rebuilt from its partitions in every rank's flat fp32 group.

Under ZeRO-3 ``zero_pp_rank_R_mp_rank_00_optim_states.pt`` holds ``optimizer_state_dict.fp32_flat_groups``: per
param group one flat fp32 tensor per data-parallel rank. A parameter of ``n`` elements takes ``p = ceil(n / W)``
elements of each rank's group (``W`` ranks; the last rank's piece zero-padded), the parameters of a group one after
another in ``param_shapes`` order (``deepspeed/utils/zero_to_fp32.py``, ``zero3_partitioned_param_info`` and
``GatheredTensor``). Frozen parameters are ``frozen_param_fragments`` of each rank's model-states file, concatenated
and cut the same way.

A parameter's per-rank pieces (padding excluded) are its :class:`ZeroSlice` chunks, in rank order (the order in which
``zero_to_fp32.py`` concatenates them): per-chunk statistics read one slice at a time, each slice's bytes alone from
its rank's file (``TorchZipReader.read_elements``), never the whole flat group; a whole parameter is assembled
only when something needs it whole (a small tensor, spectral statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.formats.filereader import FileReader
from ckptboard.core.formats.safe_unpickle import LazyStorage, LazyTensor, contiguous_stride

__all__ = ["ZeroPiece", "ZeroSlice", "Zero3Reader", "partitioned_numel"]


def partitioned_numel(numel: int, world: int) -> int:
    """Elements each rank holds of a parameter of ``numel`` elements (padding included)."""
    return math.ceil(numel / world)


@dataclass
class ZeroPiece:
    """Where one parameter lies: in each rank's ``sources[rank]`` (a flat tensor record of the file named
    ``files[rank]``) from ``offset`` on."""

    name: str
    shape: tuple[int, ...]
    sources: list[LazyTensor]
    offset: int
    per_rank: int
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ZeroSlice:
    """One rank's piece of a parameter, padding excluded: the parameter's flat elements ``[start, start + count)``,
    held in ``file`` (that rank's file name) as elements ``[source_start, …)`` of ``source``."""

    rank: int
    file: str
    start: int
    count: int
    source: LazyTensor
    source_start: int


class Zero3Reader(FileReader):
    """Materialises the ZeRO-3 parameters it was given (``pieces``); the rank files' readers stay open meanwhile."""

    def __init__(self, folder, pieces: dict[str, ZeroPiece], readers: list[FileReader]):
        super().__init__(folder)
        self.pieces, self.readers = pieces, readers

    def lazy(self, piece: ZeroPiece) -> LazyTensor:
        dtype = piece.sources[0].dtype
        storage = LazyStorage(piece.name, dtype, math.prod(piece.shape), reader=self)
        return LazyTensor(storage, 0, piece.shape, contiguous_stride(piece.shape), dtype)

    def chunks(self, lazy: LazyTensor) -> list[ZeroSlice]:
        """The parameter's non-empty rank slices in rank order, checked to lie inside their flat groups."""
        piece = self.pieces[lazy.storage.key]
        numel = math.prod(piece.shape)
        out = []
        for rank, source in enumerate(piece.sources):
            start = rank * piece.per_rank
            count = max(0, min(piece.per_rank, numel - start))
            if piece.offset + piece.per_rank > source.numel:
                raise CorruptCheckpointError(self.path, f"{piece.name}: rank {rank}'s flat group ends before its piece")
            if count:
                file = piece.files[rank] if piece.files else ""
                out.append(ZeroSlice(rank, file, start, count, source, piece.offset))
        return out

    def read_chunk(self, lazy: LazyTensor, chunk: ZeroSlice) -> torch.Tensor:
        """One rank's slice of the parameter (1-D), read on its own from that rank's file."""
        return _read(chunk.source, chunk.source_start, chunk.count, self.path)

    def read_range(self, lazy: LazyTensor, start: int, count: int) -> torch.Tensor:
        """The parameter's flat elements ``[start, start + count)``, copied from the slices they overlap, one slice
        read at a time (the previous checkpoint's part of a slice, whatever its own partitioning)."""
        out = torch.empty(count, dtype=lazy.dtype)
        for chunk in self.chunks(lazy):
            lo, hi = max(start, chunk.start), min(start + count, chunk.start + chunk.count)
            if lo < hi:
                out[lo - start : hi - start] = _read(chunk.source, chunk.source_start + lo - chunk.start, hi - lo,
                                                     self.path)
        return out

    def materialise(self, lazy: LazyTensor, device: torch.device) -> torch.Tensor:
        piece = self.pieces[lazy.storage.key]
        out = self.read_range(lazy, 0, math.prod(piece.shape))
        return out.view(piece.shape) if device.type == "cpu" else out.view(piece.shape).to(device)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.readers = []


def _read(source: LazyTensor, start: int, count: int, folder) -> torch.Tensor:
    """Elements ``[start, start + count)`` of a flat record: only those bytes where its reader can read a range."""
    reader = source.storage.reader
    if start + count > source.numel:
        raise CorruptCheckpointError(folder, f"a rank's flat group of {source.numel} elements ends before element "
                                             f"{start + count}")
    if hasattr(reader, "read_elements"):
        return reader.read_elements(source, start, count)
    flat = reader.materialise(source, torch.device("cpu")).reshape(-1)  # a legacy (non-zip) file: read whole
    return flat[start : start + count].clone()
