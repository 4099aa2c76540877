"""Reading checkpoints: list every tensor without reading its data; materialise one tensor at a time.

Formats are recognised by content: ``torch.save`` zip archives (``data.pkl`` read by
:mod:`ckptboard.core.formats.safe_unpickle`, storages read on demand with ``pread``), legacy ``torch.save`` files,
``.safetensors``, Hugging Face folders (index JSON + shards) and, with ``trust=True`` only, whole pickled modules and
TorchScript.
Nothing in a pickle runs unless ``trust=True``; even then the safe path is tried first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckptboard.core.formats.filereader import FileReader
from ckptboard.core.formats.hf_folder import INDEX_NAMES
from ckptboard.core.formats.legacy import LegacyReader
from ckptboard.core.formats.safetensors_file import SafetensorsReader
from ckptboard.core.formats.sniff import Signature, sniff
from ckptboard.core.formats.torchzip import TorchZipReader
from ckptboard.core.containers import (
    Contents,
    WalkBudgetError,
    display_prefix,
    split_contents,
    tensor_dtype,
    tensor_shape,
)
from ckptboard.core.devices import resolve_device
from ckptboard.core.errors import (
    CheckpointError,
    CorruptCheckpointError,
    NotACheckpointError,
    UnsafeCheckpointError,
    UsageError,
)
from ckptboard.core.records import (
    CheckpointFormat,
    OptimizerParam,
    OptimizerState,
    StepSource,
    TensorGroup,
    TensorInfo,
)
from ckptboard.core.formats.safe_unpickle import LazyTensor
from ckptboard.core.steps import step_from_metadata, step_from_name
from ckptboard.core.validate import existing_path

__all__ = ["open_checkpoint", "Checkpoint"]

_READERS = {
    Signature.ZIP: (TorchZipReader, CheckpointFormat.TORCH_ZIP),
    Signature.TORCH_LEGACY: (LegacyReader, CheckpointFormat.TORCH_LEGACY),
    Signature.SAFETENSORS: (SafetensorsReader, CheckpointFormat.SAFETENSORS),
}
_NOT_READ = {
    Signature.EMPTY: "empty file (0 bytes)",
    Signature.PICKLE: "a plain pickle without torch.save's header: not a checkpoint ckptboard reads",
    Signature.UNKNOWN: "not a checkpoint: no torch.save zip, legacy torch.save or safetensors signature",
}
_TRUST_HINT = "re-run with --trust if you trust this file"


@dataclass(eq=False)
class Checkpoint:
    """An open checkpoint: tensor records (no data) and :meth:`load` for one tensor at a time."""

    path: Path
    format: CheckpointFormat
    device: torch.device
    groups: list[TensorGroup] = field(default_factory=list)
    optimizers: list[OptimizerState] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    skipped_globals: list[str] = field(default_factory=list)
    step: int | None = None
    step_source: StepSource = StepSource.NONE
    notes: list[str] = field(default_factory=list)
    module: torch.nn.Module | None = None
    _refs: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    _readers: list[FileReader] = field(default_factory=list, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def tensors(self) -> list[TensorInfo]:
        """Every model tensor, all groups flattened in file order."""
        return [info for group in self.groups for info in group.tensors]

    def load(self, info: TensorInfo) -> torch.Tensor:
        """The tensor ``info`` describes, on :attr:`device`, in memory of its own (never a mapping of the file)."""
        return self._materialise(self._ref(info), f"tensor {info.name}")

    def load_many(self, infos: list[TensorInfo]) -> list[torch.Tensor]:
        """The tensors ``infos`` describe, as :meth:`load` gives them; a reader that can (safetensors) reads
        neighbouring byte ranges together, one read instead of one per tensor (for checkpoints of many small
        tensors)."""
        refs = [self._ref(info) for info in infos]
        out: list[torch.Tensor | None] = [None] * len(refs)
        batched: dict[int, tuple[Any, list[int]]] = {}
        for i, ref in enumerate(refs):
            reader = ref.storage.reader if isinstance(ref, LazyTensor) else None
            if hasattr(reader, "materialise_many"):
                batched.setdefault(id(reader), (reader, []))[1].append(i)
            else:
                out[i] = self._materialise(ref, f"tensor {infos[i].name}")
        for reader, indices in batched.values():
            try:
                tensors = reader.materialise_many([refs[i] for i in indices], self.device)
            except CheckpointError:
                raise
            except (RuntimeError, ValueError, OSError) as e:
                raise CorruptCheckpointError(self.path, f"tensors cannot be read ({e})") from e
            for i, tensor in zip(indices, tensors):
                out[i] = tensor
        return out  # type: ignore[return-value]

    def _ref(self, info: TensorInfo) -> Any:
        if self._closed:
            raise UsageError(f"{self.path}: the checkpoint was closed; open it again to load {info.name}")
        try:
            return self._refs[(info.group, info.raw_name)]
        except KeyError:
            raise UsageError(f"{self.path}: no tensor {info.raw_name!r} in group {info.group!r}") from None

    def load_state(self, optimizer: OptimizerState, param: OptimizerParam, name: str) -> torch.Tensor:
        """One optimizer state tensor (``exp_avg``, ``momentum_buffer``, ``step``, ...) of ``param``, on :attr:`device`."""
        if self._closed:
            raise UsageError(f"{self.path}: the checkpoint was closed; open it again to load optimizer state")
        try:
            ref = param.state_refs[name]
        except KeyError:
            raise UsageError(f"{self.path}: optimizer {optimizer.key_path!r} has no state {name!r} for parameter "
                             f"{param.param_id!r}") from None
        return self._materialise(ref, f"optimizer state {name} of parameter {param.param_id!r}")

    def _materialise(self, ref: Any, what: str) -> torch.Tensor:
        if isinstance(ref, torch.Tensor):
            return ref.detach().to(self.device)
        try:
            return ref.storage.reader.materialise(ref, self.device)
        except CheckpointError:
            raise
        except (RuntimeError, ValueError, OSError) as e:
            raise CorruptCheckpointError(self.path, f"{what} cannot be read ({e})") from e

    def close(self) -> None:
        """Release files and buffers; tensors already loaded stay valid."""
        for reader in self._readers:
            reader.close()
        self._readers.clear()
        self._closed = True

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_checkpoint(path: str | Path, device: str | torch.device = "cpu", trust: bool = False) -> Checkpoint:
    """Open a checkpoint file or a checkpoint folder (Hugging Face, Trainer, DCP, …) and list its tensors without
    reading their data."""
    device = resolve_device(device)
    path = existing_path(path)
    try:
        if path.is_dir():
            return _open_folder(path, device, trust)
        return _open_file(path, device, trust)
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from e
    except WalkBudgetError as e:
        raise CorruptCheckpointError(path, str(e)) from e
    except RecursionError as e:  # a guard missed somewhere: still one line, never a traceback
        raise CorruptCheckpointError(path, "objects nested too deeply to read") from e


def _file_reader(path: Path, label: str = "") -> tuple[FileReader, CheckpointFormat]:
    signature = sniff(path)
    if signature not in _READERS:
        raise NotACheckpointError(path, _NOT_READ[signature])
    reader_class, fmt = _READERS[signature]
    return reader_class(path, label), fmt


def _open_folder(path: Path, device: torch.device, trust: bool) -> Checkpoint:
    """A checkpoint folder: whichever training-framework layout recognises it (:mod:`ckptboard.core.layouts`)."""
    from ckptboard.core.layouts import detect

    match = detect(path)
    if match is None:
        raise NotACheckpointError(
            path,
            f"a folder without {' or '.join(INDEX_NAMES)} and of no known training layout (README: Layouts): "
            "pass one checkpoint file, or give the folder of runs to `ckptboard summarize` or `ckptboard serve`",
        )
    return match.layout.open(match, device, trust)


def _open_file(path: Path, device: torch.device, trust: bool) -> Checkpoint:
    reader, fmt = _file_reader(path)
    try:
        if reader.is_torchscript:
            raise UnsafeCheckpointError(path, f"a TorchScript archive: reading it runs its code; {_TRUST_HINT}")
        contents = split_contents(reader.read_root(), _read_scalar)
        if contents.hidden_tensors and not contents.groups:
            raise UnsafeCheckpointError(
                path,
                f"its tensors are held by {', '.join(contents.hidden_in)} objects (a whole pickled nn.Module or a "
                f"custom class), which only their own code can build; {_TRUST_HINT}",
            )
    except UnsafeCheckpointError:
        reader.close()
        if not trust:
            raise
        return _open_trusted(path, CheckpointFormat.TORCHSCRIPT if reader.is_torchscript else fmt, device)
    except BaseException:
        reader.close()
        raise
    ckpt = Checkpoint(path, fmt, device, skipped_globals=list(reader.skipped_globals), notes=list(reader.notes))
    ckpt._readers.append(reader)
    if contents.hidden_tensors:
        ckpt.notes.append(
            f"{contents.hidden_tensors} tensors inside skipped objects ({', '.join(contents.hidden_in)}) are not "
            "listed; --trust would build them"
        )
    return _fill(ckpt, contents, reader.metadata)


def _open_trusted(path: Path, fmt: CheckpointFormat, device: torch.device) -> Checkpoint:
    """``trust=True`` and the safe path refused: let torch build everything (the pickle's code runs)."""
    try:
        if fmt is CheckpointFormat.TORCHSCRIPT:
            root = torch.jit.load(str(path), map_location="cpu")
        else:
            root = torch.load(path, map_location="cpu", weights_only=False, mmap=fmt is CheckpointFormat.TORCH_ZIP)
    except Exception as e:  # whatever the trusted pickle raises
        raise CorruptCheckpointError(path, f"torch cannot load it even trusted ({type(e).__name__}: {e})") from e
    contents = split_contents(root, _read_scalar)
    if contents.modules and fmt is not CheckpointFormat.TORCHSCRIPT:
        fmt = CheckpointFormat.PICKLED_MODULE
    ckpt = Checkpoint(path, fmt, device, module=contents.modules[0] if contents.modules else None)
    ckpt.notes.append("trusted: built by torch.load(weights_only=False) / torch.jit.load; the file's code ran")
    return _fill(ckpt, contents, {})


def _read_scalar(value: LazyTensor | torch.Tensor) -> int | float | bool | complex | None:
    """The value of a 0-d tensor in metadata (a few bytes read); None when it cannot be read."""
    try:
        tensor = value if isinstance(value, torch.Tensor) else value.storage.reader.materialise(value, torch.device("cpu"))
        return tensor.item()
    except (CheckpointError, RuntimeError, ValueError, OSError):
        return None


def _fill(ckpt: Checkpoint, contents: Contents, extra_metadata: dict[str, Any]) -> Checkpoint:
    """Tensor records (prefixes stripped, ties found), optimizers, metadata and step of ``ckpt``."""
    first: dict[tuple, TensorInfo] = {}
    for group_name, tensors in contents.groups:
        group = TensorGroup(group_name, stripped_prefix=display_prefix(list(tensors)))
        for raw_name, value in tensors.items():
            info = _tensor_info(group_name, raw_name[len(group.stripped_prefix) :], raw_name, value)
            tie = _tie_key(value)
            if tie is not None and tie in first:
                other = first[tie]
                info.tied_to = other.name if other.group == group_name else f"{other.group}/{other.name}"
            elif tie is not None:
                first[tie] = info
            group.tensors.append(info)
            ckpt._refs[(group_name, raw_name)] = value
        ckpt.groups.append(group)
    ckpt.optimizers = contents.optimizers
    ckpt.metadata = {**{str(k): v for k, v in extra_metadata.items()}, **contents.metadata}
    ckpt.step, ckpt.step_source = step_from_metadata(ckpt.metadata)
    if ckpt.step is None:
        ckpt.step, ckpt.step_source = step_from_name(ckpt.path.name)
    if not ckpt.groups:
        ckpt.notes.append("no model tensors found")
    return ckpt


def _tensor_info(group: str, name: str, raw_name: str, value: LazyTensor | torch.Tensor) -> TensorInfo:
    if isinstance(value, LazyTensor):
        label = value.storage.reader.label
        key, offset, numel, nbytes = value.storage.key, value.offset, value.numel, value.nbytes
        key = f"{label}:{key}" if label else key
    else:
        key = f"memory:{value.untyped_storage().data_ptr():x}" if value.device.type != "meta" else ""
        offset, numel, nbytes = value.storage_offset(), value.numel(), value.numel() * value.element_size()
    return TensorInfo(
        group=group,
        name=name,
        raw_name=raw_name,
        shape=tensor_shape(value),
        dtype=tensor_dtype(value),
        numel=numel,
        nbytes=nbytes,
        storage_key=key,
        storage_offset=offset,
    )


def _tie_key(value: LazyTensor | torch.Tensor) -> tuple | None:
    """Same storage, offset, shape and dtype: the same data. Empty and meta tensors tie to nothing."""
    if isinstance(value, LazyTensor):
        if not value.numel:
            return None
        return id(value.storage.reader), value.storage.key, value.offset, value.shape, value.dtype
    if not value.numel() or value.device.type == "meta":
        return None
    return value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype
