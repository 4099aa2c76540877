"""Open a layout's files as one checkpoint: weight files as named groups, optimizer files for ``trainable`` only."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ckptboard.core.containers import Contents, split_contents
from ckptboard.core.errors import CheckpointError, CorruptCheckpointError
from ckptboard.core.formats.hf_folder import read_hf_folder
from ckptboard.core.layouts import LayoutMatch
from ckptboard.core.records import CheckpointFormat, OptimizerState

__all__ = ["open_file_set", "open_hf_folder", "read_optimizers"]


def open_file_set(match: LayoutMatch, fmt: CheckpointFormat, device: torch.device):
    """A :class:`~ckptboard.core.reader.Checkpoint` over ``match.weights`` (each file a group) and its optimizers."""
    from ckptboard.core.reader import Checkpoint, _fill, _file_reader, _read_scalar

    if match.error is not None:
        raise match.error
    ckpt = Checkpoint(match.path, fmt, device)
    contents = Contents()
    try:
        for group, file in match.weights:
            if file.is_dir():  # a DCP folder inside the checkpoint (accelerate's FSDP pytorch_model_fsdp_0/)
                found = _dcp_contents(file, ckpt)
                contents.groups += [(f"{group}/{inner}" if inner else group, t) for inner, t in found.groups]
                contents.optimizers += _named(found.optimizers, group)
                continue
            reader = _file_reader(file, file.name)[0]
            ckpt._readers.append(reader)
            found = split_contents(reader.read_root(), _read_scalar)
            for inner, tensors in found.groups:
                if match.keep_groups and not re.match(match.keep_groups, inner):
                    continue
                contents.groups.append((f"{group}/{inner}" if group and inner else group or inner, tensors))
            for opt in found.optimizers:  # an optimizer saved inside a weights file still counts, for its group
                opt.key_path = f"{group}/{opt.key_path}" if group and opt.key_path else group or opt.key_path
                contents.optimizers.append(opt)
            for key, value in found.metadata.items():
                contents.metadata.setdefault(key, value)
            ckpt.skipped_globals += [g for g in reader.skipped_globals if g not in ckpt.skipped_globals]
            ckpt.notes += [n for n in reader.notes if n not in ckpt.notes]
        contents.optimizers += read_optimizers([f for f in match.optimizers if not f.is_dir()], match.path,
                                               keep=ckpt._readers)
        for folder in (f for f in match.optimizers if f.is_dir()):  # accelerate's FSDP optimizer_0/ DCP folder
            contents.optimizers += _named(_dcp_contents(folder, ckpt).optimizers, folder.name)
    except BaseException:
        ckpt.close()
        raise
    ckpt.notes += match.notes
    _fill(ckpt, contents, match.metadata)
    if match.step is not None:
        ckpt.step, ckpt.step_source = match.step, match.step_source
    return ckpt


def _dcp_contents(folder: Path, ckpt) -> Contents:
    """The groups and optimizers of a DCP folder inside a checkpoint; its reader joins the checkpoint's readers."""
    from ckptboard.core.formats.dcp import DcpReader
    from ckptboard.core.layouts.dcp import Dcp

    reader = DcpReader(folder)
    ckpt._readers.append(reader)
    contents, _ = Dcp()._contents(LayoutMatch(Dcp(), folder, files=[]), reader, ckpt)
    return contents


def _named(optimizers: list[OptimizerState], where: str) -> list[OptimizerState]:
    for opt in optimizers:
        opt.key_path = f"{where}/{opt.key_path}" if opt.key_path else where
    return optimizers


def read_optimizers(files: list[Path], folder: Path, keep: list | None = None) -> list[OptimizerState]:
    """The optimizer states in ``files``, named by file. Each file's reader is appended to ``keep`` (a checkpoint's
    readers: its state tensors can then be loaded, for the gradient statistics), or closed again without it."""
    from ckptboard.core.reader import _file_reader, _read_scalar

    out: list[OptimizerState] = []
    for file in files:
        try:
            reader = _file_reader(file)[0]
        except CheckpointError as e:
            raise CorruptCheckpointError(folder, f"optimizer file {file.name}: {e.problem}") from e
        try:
            for opt in split_contents(reader.read_root(), _read_scalar).optimizers:
                opt.key_path = f"{file.name}/{opt.key_path}" if opt.key_path else file.name
                out.append(opt)
        except BaseException:
            reader.close()
            raise
        if keep is None:
            reader.close()
        else:
            keep.append(reader)
    return out


def open_hf_folder(match: LayoutMatch, fmt: CheckpointFormat, device: torch.device):
    """The checkpoint of a Hugging Face folder: every shard's tensors in one group ``""``."""
    from ckptboard.core.reader import Checkpoint, _fill, _file_reader, _read_scalar

    if match.error is not None:
        raise match.error
    root, readers, metadata = read_hf_folder(match.path, lambda shard, label: _file_reader(shard, label)[0])
    ckpt = Checkpoint(match.path, fmt, device, _readers=readers)
    for reader in readers:
        ckpt.notes.extend(n for n in reader.notes if n not in ckpt.notes)
    ckpt.notes += match.notes
    return _fill(ckpt, split_contents(root, _read_scalar), {**metadata, **match.metadata})
