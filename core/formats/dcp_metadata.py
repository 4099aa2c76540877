"""The ``.metadata`` file of a ``torch.distributed.checkpoint`` folder, read without running code.

It is a pickled ``torch.distributed.checkpoint.metadata.Metadata`` (torch 2.x): ``state_dict_metadata`` maps each
flattened key to a ``TensorStorageMetadata`` (dtype, global size, chunks: offsets and sizes) or a
``BytesStorageMetadata`` (any other value, pickled on its own); ``storage_data`` maps ``MetadataIndex(fqn, chunk
offsets)`` to ``_StorageInfo(relative_path, offset, length)``: where the chunk's own ``torch.save`` zip lies in which
``.distcp`` file. :class:`~ckptboard.core.formats.safe_unpickle.SafeUnpickler` is extended with exactly those classes
(as inert records) and the few values they hold; any other global stops the read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ckptboard.core.errors import CorruptCheckpointError, UnsafeCheckpointError
from ckptboard.core.formats.safe_unpickle import BadRecord, DangerousGlobal, SafeUnpickler, Skipped

__all__ = ["DcpChunk", "DcpItem", "DcpMetadata", "read_dcp_metadata", "METADATA_NAME"]

METADATA_NAME = ".metadata"


class _Record(Skipped):
    """An inert stand-in for one DCP metadata class: keeps what BUILD gives it as attributes, runs nothing (a
    placeholder, so the unpickler lets NEWOBJ and BUILD make and fill it)."""

    qualname = "?"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots)
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        else:
            self.__dict__["_state"] = state  # TensorProperties pickles a tuple


def _record(qualname: str) -> type[_Record]:
    return type(qualname.rpartition(".")[2], (_Record,), {"qualname": qualname})


_DCP = "torch.distributed.checkpoint"
_RECORDS = {
    q: _record(q)
    for q in (
        f"{_DCP}.metadata.Metadata", f"{_DCP}.metadata.TensorStorageMetadata", f"{_DCP}.metadata.TensorProperties",
        f"{_DCP}.metadata.ChunkStorageMetadata", f"{_DCP}.metadata.BytesStorageMetadata",
        f"{_DCP}.metadata.MetadataIndex", f"{_DCP}.metadata.StorageMeta", f"{_DCP}.filesystem._StorageInfo",
        "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",  # torch < 2.2 wrote it from there
        # Megatron-Core 0.15's torch_dist: DCP's Metadata plus ``mcore_data`` (megatron/core/dist_checkpointing/
        # strategies/torch.py), the root of its ``.metadata``
        "megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata",
    )
}  # fmt: skip
_VALUES = {
    f"{_DCP}.metadata._MEM_FORMAT_ENCODING": int,  # an Enum called with its value
    "torch._utils._get_layout": str,  # called with "torch.strided"
    "torch.serialization._get_layout": str,
    "pathlib.PosixPath": lambda *parts: "/".join(str(p) for p in parts),  # StorageMeta.checkpoint_id
    "pathlib.WindowsPath": lambda *parts: "\\".join(str(p) for p in parts),
}


class _MetadataUnpickler(SafeUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname in _RECORDS:
            return _RECORDS[qualname]
        if qualname in _VALUES:
            return _VALUES[qualname]
        return super().find_class(module, name)

    def _placeholder(self, qualname: str) -> Any:
        raise BadRecord(f"{qualname} is no DCP metadata class")


@dataclass
class DcpChunk:
    """One piece of a tensor: where it sits in the whole tensor and where its ``torch.save`` zip lies."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    offset: int
    length: int


@dataclass
class DcpItem:
    """One flattened key: a tensor (``dtype`` and ``shape`` set, one chunk or more) or a pickled value."""

    fqn: str
    dtype: torch.dtype | None = None
    shape: tuple[int, ...] = ()
    chunks: list[DcpChunk] = field(default_factory=list)

    @property
    def is_tensor(self) -> bool:
        return self.dtype is not None


@dataclass
class DcpMetadata:
    items: dict[str, DcpItem]
    version: str | None = None


def read_dcp_metadata(folder: Path) -> DcpMetadata:
    """The items of the DCP checkpoint in ``folder`` (no ``.distcp`` file is opened)."""
    path = folder / METADATA_NAME
    with open(path, "rb") as f:
        root = _load(f, folder)
    try:
        return _convert(root, folder)
    except (AttributeError, TypeError, ValueError, KeyError) as e:
        raise CorruptCheckpointError(folder, f"{METADATA_NAME} is not a DCP Metadata record ({e})") from e


def _load(f: BinaryIO, folder: Path) -> Any:
    try:
        return _MetadataUnpickler(f).load()
    except DangerousGlobal as e:
        raise UnsafeCheckpointError(
            folder, f"{METADATA_NAME} calls {e.qualname}, which can run code; ckptboard never executes it"
        ) from e
    except BadRecord as e:
        raise CorruptCheckpointError(folder, f"{METADATA_NAME}: {e}") from e
    except Exception as e:  # a damaged pickle fails in many ways
        raise CorruptCheckpointError(
            folder, f"{METADATA_NAME} is damaged or truncated ({type(e).__name__}: {e})"
        ) from e


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise ValueError(f"{what} {value!r} is not a tuple of non-negative ints")
    return tuple(value)


def _convert(root: Any, folder: Path) -> DcpMetadata:
    if getattr(root, "qualname", "").rpartition(".")[2] not in ("Metadata", "MCoreMetadata"):
        raise ValueError(f"the pickle holds {type(root).__name__}")
    where: dict[tuple[str, tuple[int, ...] | None], Any] = {}
    for index, info in (getattr(root, "storage_data", None) or {}).items():
        if getattr(info, "transform_descriptors", None):
            raise CorruptCheckpointError(
                folder, f"{index.fqn} is stored through stream transforms {info.transform_descriptors}: not supported"
            )
        offset = getattr(index, "offset", None)  # a dataclass default: absent from the pickled state
        offsets = None if offset is None else _ints(offset, "chunk offset")
        where[(str(index.fqn), offsets)] = info
    items: dict[str, DcpItem] = {}
    for fqn, meta in root.state_dict_metadata.items():
        fqn = str(fqn)
        if meta.qualname.endswith("BytesStorageMetadata"):
            info = where.get((fqn, None))
            chunk = [] if info is None else [DcpChunk((), (), *_storage(info, fqn))]
            items[fqn] = DcpItem(fqn, chunks=chunk)
            continue
        props = meta.properties
        state = props.__dict__.get("_state")
        dtype = state[0] if isinstance(state, tuple) else props.__dict__.get("dtype")
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{fqn}: dtype {dtype!r}")
        item = DcpItem(fqn, dtype, _ints(meta.size, f"{fqn}: size"))
        for chunk in meta.chunks:
            offsets, sizes = _ints(chunk.offsets, f"{fqn}: offsets"), _ints(chunk.sizes, f"{fqn}: sizes")
            if len(offsets) != len(item.shape) or len(sizes) != len(item.shape) or any(
                o + s > n for o, s, n in zip(offsets, sizes, item.shape)
            ):
                raise ValueError(f"{fqn}: chunk at {offsets} of size {sizes} lies outside {item.shape}")
            info = where.get((fqn, offsets))
            if info is None:
                raise ValueError(f"{fqn}: the chunk at {offsets} has no storage record")
            item.chunks.append(DcpChunk(offsets, sizes, *_storage(info, fqn)))
        items[fqn] = item
    return DcpMetadata(items, version=getattr(root, "version", None))


def _storage(info: Any, fqn: str) -> tuple[str, int, int]:
    file, offset, length = info.relative_path, info.offset, info.length
    if not isinstance(file, str) or Path(file).name != file or file.startswith("."):
        raise ValueError(f"{fqn}: storage file {file!r} is not a file of the folder")
    if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
        raise ValueError(f"{fqn}: storage range {offset!r}+{length!r}")
    return file, offset, length
