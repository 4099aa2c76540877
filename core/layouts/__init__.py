"""Training-framework layouts: a checkpoint that is a folder of files, recognised by content and marker files.

A :class:`Layout` says, for one framework's checkpoint folder, which files hold model weights (each a group), which
hold optimizer state (read for ``trainable``, never listed as tensors), which hold training logs, which are ignored,
and where the step comes from. Layouts are registered in priority order (``@register``, duplicate names refused);
:func:`detect` asks each in turn. Discovery uses it so that a folder of checkpoint folders is one run and the files
inside a checkpoint folder are never listed again; :func:`ckptboard.core.reader.open_checkpoint` opens the match.

A layout that recognises a folder but finds it damaged (an accelerate folder without a model file, a DCP folder
whose ``.metadata`` cannot be read) still matches, with ``error`` set: discovery lists it, opening it raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptboard.core.errors import CheckpointError, UsageError
from ckptboard.core.records import CheckpointFormat, StepSource

if TYPE_CHECKING:
    import torch

    from ckptboard.core.reader import Checkpoint

__all__ = ["Layout", "LayoutMatch", "register", "registered", "detect", "checkpoint_files"]


@dataclass
class LayoutMatch:
    """One checkpoint folder a layout recognised: its files by role, its step; nothing opened yet."""

    layout: Layout
    path: Path
    files: list[Path]  # every file whose size and mtime identify the checkpoint (weights, optimizer, step source)
    weights: list[tuple[str, Path]] = field(default_factory=list)  # (group name, file), in order
    optimizers: list[Path] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    step: int | None = None
    step_source: StepSource = StepSource.NONE
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: CheckpointError | None = None  # recognised but damaged: raised by open()
    keep_groups: str = ""  # a regex: only state_dicts at matching key paths inside the weight files are model groups


class Layout:
    """Base of the layouts: ``detect`` a folder, ``open`` what it matched."""

    name: str = ""
    format: CheckpointFormat = CheckpointFormat.HF_SHARDED

    def detect(self, folder: Path) -> LayoutMatch | None:
        """A match when ``folder`` is a checkpoint of this layout, else None; raise CheckpointError when damaged."""
        raise NotImplementedError

    def open(self, match: LayoutMatch, device: torch.device, trust: bool) -> Checkpoint:
        """The opened checkpoint (tensor records only; no data read)."""
        from ckptboard.core.layouts._fileset import open_file_set

        return open_file_set(match, self.format, device)


_REGISTRY: dict[str, Layout] = {}


def register(cls: type[Layout] | None = None, *, before: str = ""):
    """Class decorator: add one instance of ``cls`` to the registry, after those already there, or just ``before``
    the layout of that name (a more specific layout that builds on a general one, imported after it)."""

    def add(cls: type[Layout]) -> type[Layout]:
        if not cls.name or cls.name in _REGISTRY:
            raise UsageError(f"layout name {cls.name!r} is empty or registered twice")
        items = list(_REGISTRY.items())
        at = next((i for i, (name, _) in enumerate(items) if name == before), len(items))
        items.insert(at, (cls.name, cls()))
        _REGISTRY.clear()
        _REGISTRY.update(items)
        return cls

    return add if cls is None else add(cls)


def registered() -> list[Layout]:
    """The layouts in the order :func:`detect` asks them."""
    return list(_REGISTRY.values())


def detect(path: Path) -> LayoutMatch | None:
    """The first layout that recognises the folder ``path``, or None (files and unknown folders)."""
    path = Path(path)
    if not path.is_dir():
        return None
    for layout in _REGISTRY.values():
        try:
            match = layout.detect(path)
        except CheckpointError as e:
            return LayoutMatch(layout, path, files=[path], error=e)
        except OSError as e:
            return LayoutMatch(layout, path, files=[path], error=CheckpointError(path, f"cannot be read ({e})"))
        if match is not None:
            return match
    return None


def checkpoint_files(path: Path) -> list[Path]:
    """The files whose size and mtime identify the checkpoint at ``path`` (the file itself for a file)."""
    match = detect(path)
    return [Path(path)] if match is None else match.files


# Registration order is detection order: the most specific markers first.
from ckptboard.core.layouts import dcp, deepspeed, megatron, peft, hf_trainer, accelerate, hf_model  # noqa: E402,F401
from ckptboard.core.layouts import megatron_dist  # noqa: E402,F401  (registered before dcp)
