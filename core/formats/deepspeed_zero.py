"""DeepSpeed ZeRO-3 weights: each trainable parameter rebuilt from its partitions in every rank's flat fp32 group.

Under ZeRO-3 ``zero_pp_rank_R_mp_rank_00_optim_states.pt`` holds ``optimizer_state_dict.fp32_flat_groups``: per
param group one flat fp32 tensor per data-parallel rank. A parameter of ``n`` elements takes ``p = ceil(n / W)``
elements of each rank's group (``W`` ranks; the last rank's piece zero-padded), the parameters of a group one after
another in ``param_shapes`` order (``deepspeed/utils/zero_to_fp32.py``, ``zero3_partitioned_param_info`` and
``GatheredTensor``). Frozen parameters are ``frozen_param_fragments`` of each rank's model-states file, concatenated
and cut the same way. One parameter is assembled at a time from mmapped views of the rank files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.formats.filereader import FileReader
from ckptboard.core.formats.safe_unpickle import LazyStorage, LazyTensor, contiguous_stride

__all__ = ["ZeroPiece", "Zero3Reader", "partitioned_numel"]


def partitioned_numel(numel: int, world: int) -> int:
    """Elements each rank holds of a parameter of ``numel`` elements (padding included)."""
    return math.ceil(numel / world)


@dataclass
class ZeroPiece:
    """Where one parameter lies: in each rank's ``sources[rank]`` (a flat tensor record) from ``offset`` on."""

    name: str
    shape: tuple[int, ...]
    sources: list[LazyTensor]
    offset: int
    per_rank: int


class Zero3Reader(FileReader):
    """Materialises the ZeRO-3 parameters it was given (``pieces``); the rank files' readers stay open meanwhile."""

    def __init__(self, folder, pieces: dict[str, ZeroPiece], readers: list[FileReader]):
        super().__init__(folder)
        self.pieces, self.readers = pieces, readers

    def lazy(self, piece: ZeroPiece) -> LazyTensor:
        dtype = piece.sources[0].dtype
        storage = LazyStorage(piece.name, dtype, math.prod(piece.shape), reader=self)
        return LazyTensor(storage, 0, piece.shape, contiguous_stride(piece.shape), dtype)

    def materialise(self, lazy: LazyTensor, device: torch.device) -> torch.Tensor:
        piece = self.pieces[lazy.storage.key]
        numel = math.prod(piece.shape)
        out = torch.empty(numel, dtype=lazy.dtype)
        filled = 0
        for source in piece.sources:
            if filled >= numel:
                break
            if piece.offset + piece.per_rank > source.numel:
                raise CorruptCheckpointError(self.path, f"{piece.name}: a rank's flat group ends before its piece")
            flat = source.storage.reader.materialise(source, torch.device("cpu")).reshape(-1)
            take = min(piece.per_rank, numel - filled)
            out[filled : filled + take].copy_(flat[piece.offset : piece.offset + take])
            filled += take
            del flat
        return out.view(piece.shape) if device.type == "cpu" else out.view(piece.shape).to(device)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.readers = []
