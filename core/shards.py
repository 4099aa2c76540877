"""Shard tasks and split tensors: a checkpoint's work divided by the files that hold it, a tensor's by its chunks.

A checkpoint stored in several data files (a Hugging Face index's ``model-0000X-of-0000N`` shards, a DCP folder's
``.distcp`` files, a DeepSpeed ZeRO-3 folder's ``zero_pp_rank_R_mp_rank_XX_optim_states.pt``) can be summarised by
one task per file, a :class:`Part`. A part computes the rows of the tensors whose data lies in its file and, of a
tensor split into chunks over several files (DCP under FSDP; a ZeRO-3 parameter's rank slices,
:class:`~ckptboard.core.formats.deepspeed_zero.ZeroSlice`), the sums of its own chunks (:class:`ChunkSums`); the
lead part (index 0) also makes the checkpoint-level rows (and, under ZeRO-3, holds the model-states files: buffers,
frozen fragments). Which part holds a tensor is decided from the listing alone, so that every part decides alike.

A split tensor's statistics are always computed chunk by chunk (:func:`chunk_sums`, one chunk in memory at a time)
and merged in the order of the chunks' offsets (:func:`merge_chunk_sums`), whether one task or many computed them:
one task and many give the same numbers, bit for bit. A split tensor of at most ``EXACT_PERCENTILE_NUMEL`` elements
is read whole (it is tiny, and its percentiles are then exact by sorting), by the part holding its first chunk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckptboard.core.errors import CheckpointError
from ckptboard.core.records import TensorInfo
from ckptboard.core.stats import DEFAULT_RESOLUTION, EXACT_PERCENTILE_NUMEL, TensorStats, _Acc, accumulate, finish
from ckptboard.core.updates import UpdateStats, update_from_sums, update_sums

__all__ = ["Part", "ChunkSums", "data_files", "split_chunks", "tensor_file", "chunk_sums", "merge_chunk_sums"]


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` of one checkpoint: the tensors (and chunks) held by ``files`` (names inside the
    checkpoint folder). The lead part (index 0) also makes the checkpoint-level rows."""

    index: int
    count: int
    files: tuple[str, ...]

    @property
    def lead(self) -> bool:
        return self.index == 0

    def holds(self, ckpt, info: TensorInfo, chunks: list | None) -> bool:
        """This part computes something of ``info``: a chunk of it, or all of it (a tensor in no file of any part,
        e.g. one built in memory by a trusted load, is the lead part's)."""
        if chunks is not None:
            return any(c.file in self.files for c in chunks)
        file = tensor_file(ckpt, info)
        return file in self.files if file is not None else self.lead


@dataclass
class ChunkSums:
    """The running sums of one chunk of a split tensor (``index`` in offset order) and, when the tensor has update
    statistics, the six update sums of the same elements (``has_first``: ``first`` was readable for them)."""

    index: int
    acc: _Acc
    update: np.ndarray | None = None
    has_first: bool = False


def data_files(path: Path) -> list[tuple[str, ...]] | None:
    """The files of each part a checkpoint's tensors are split over, by name (a DCP folder's ``.distcp`` files, a
    Hugging Face index's shards, one each; a ZeRO-3 folder's optim-states files, the first with every model-states
    file), or None when it is not such a checkpoint (one file, a folder of another layout)."""
    from ckptboard.core.formats.hf_folder import INDEX_NAMES, hf_weight_files
    from ckptboard.core.layouts import detect

    try:
        match = detect(Path(path))
        if match is None or match.error is not None:
            return None
        if match.layout.name == "dcp":
            return [(f.name,) for f in match.files if f.suffix == ".distcp"]
        if match.layout.name in ("hf_model", "hf_trainer"):
            files = hf_weight_files(Path(path))
            if files and files[0].name in INDEX_NAMES:
                return [(f.name,) for f in files[1:]]
        if match.layout.name == "deepspeed" and match.metadata.get("zero3"):
            models = tuple(f.name for f in match.files if f.name.endswith("_model_states.pt"))
            optims = [f.name for f in match.files if f.name.endswith("_optim_states.pt")]
            return [(name, *models) if i == 0 else (name,) for i, name in enumerate(optims)]
    except (CheckpointError, OSError):
        return None  # its task reports the damage
    return None


def _ref(ckpt, info: TensorInfo) -> Any:
    return ckpt._refs.get((info.group, info.raw_name))


def split_chunks(ckpt, info: TensorInfo) -> list | None:
    """The chunks of a tensor stored as several DCP chunks or ZeRO-3 rank slices and larger than
    ``EXACT_PERCENTILE_NUMEL`` (in offset order), or None for a tensor read whole."""
    ref = _ref(ckpt, info)
    if _chunked_reader(ref) is None:
        return None
    if info.numel <= EXACT_PERCENTILE_NUMEL:
        return None
    chunks = ref.storage.reader.chunks(ref)
    return chunks if len(chunks) > 1 else None


def tensor_file(ckpt, info: TensorInfo) -> str | None:
    """The name of the file holding a tensor read whole (a DCP tensor's: that of its first chunk), or None."""
    from ckptboard.core.formats.safe_unpickle import LazyTensor

    ref = _ref(ckpt, info)
    if not isinstance(ref, LazyTensor) or ref.storage.reader is None:
        return None
    if _chunked_reader(ref) is not None:
        chunks = ref.storage.reader.chunks(ref)
        return chunks[0].file if chunks else None
    return Path(ref.storage.reader.path).name


def _chunked_reader(ref: Any) -> Any:
    """The reader of a tensor stored in chunks (DCP, ZeRO-3: ``chunks``, ``read_chunk``), or None."""
    from ckptboard.core.formats.dcp import DcpReader
    from ckptboard.core.formats.deepspeed_zero import Zero3Reader
    from ckptboard.core.formats.safe_unpickle import LazyTensor

    if isinstance(ref, LazyTensor) and isinstance(ref.storage.reader, (DcpReader, Zero3Reader)):
        return ref.storage.reader
    return None


def chunk_sums(ckpt, info: TensorInfo, chunks: list, *, files: tuple[str, ...] | None = None, prev=None,
               prev_info: TensorInfo | None = None, first=None, first_info: TensorInfo | None = None,
               device: str = "cpu") -> list[ChunkSums]:
    """The sums of ``chunks`` of a split tensor (those in ``files``; all without), read one chunk at a time; with
    ``prev_info`` (same shape, in ``prev``) the update sums of the same elements against ``prev`` and ``first``."""
    ref = _ref(ckpt, info)
    reader = ref.storage.reader
    whole: dict[int, Any] = {}  # a neighbour that is no DCP: loaded once, sliced per chunk
    out = []
    for index, chunk in enumerate(chunks):
        if files is not None and chunk.file not in files:
            continue
        piece = reader.read_chunk(ref, chunk)
        sums = ChunkSums(index, accumulate(piece, device=device))
        if prev_info is not None:
            before = _region(prev, prev_info, chunk, whole)
            after = _region(first, first_info, chunk, whole) if first_info is not None else None
            if before is not None:
                sums.update = update_sums(before, piece, after, device=device)
                sums.has_first = after is not None
            del before, after
        del piece
        out.append(sums)
    return out


def _region(ckpt, info: TensorInfo | None, chunk, whole: dict[int, Any]):
    """The elements of ``chunk``'s block (a ZeRO-3 slice's flat range) in another checkpoint's version of the
    tensor, or None if unreadable."""
    from ckptboard.core.formats.dcp import DcpReader
    from ckptboard.core.formats.deepspeed_zero import Zero3Reader, ZeroSlice

    if ckpt is None or info is None:
        return None
    ref = _ref(ckpt, info)
    reader = _chunked_reader(ref)
    flat = isinstance(chunk, ZeroSlice)
    try:
        if isinstance(reader, DcpReader) and not flat:
            return reader.read_region(ref, chunk.offsets, chunk.sizes)
        if isinstance(reader, Zero3Reader) and flat:
            return reader.read_range(ref, chunk.start, chunk.count)
        if id(ckpt) not in whole:
            whole[id(ckpt)] = ckpt.load(info)
    except CheckpointError:
        return None  # a neighbour being rewritten costs the update statistics, as for a whole tensor
    if flat:
        return whole[id(ckpt)].reshape(-1)[chunk.start : chunk.start + chunk.count]
    index = tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))
    return whole[id(ckpt)][index]


def merge_chunk_sums(sums: Iterable[ChunkSums], count: int, resolution: int | None = DEFAULT_RESOLUTION
                     ) -> tuple[TensorStats, UpdateStats | None]:
    """The statistics of a tensor of ``count`` chunks from every chunk's sums given in chunk order (folded as they
    come: one chunk's code counts in memory besides the running ones); its update statistics when every chunk has
    update sums (``dist_from_first`` only when every chunk had ``first``)."""
    acc = None
    total: np.ndarray | None = np.zeros(6)
    has_first = True
    seen = 0
    for s in sums:
        if s.index != seen:
            raise ValueError(f"chunk sums out of order or missing: chunk {s.index} where {seen} was due")
        acc = s.acc if acc is None else acc.merged(s.acc)
        if total is not None and s.update is not None:
            total = total + s.update
            has_first = has_first and s.has_first
        else:
            total = None
        seen += 1
    if seen != count or acc is None:
        raise ValueError(f"chunk sums of {seen} of the tensor's {count} chunks")
    return finish(acc, resolution), None if total is None else update_from_sums(total, has_first)
