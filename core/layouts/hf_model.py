"""Hugging Face model folder (``save_pretrained``): an index JSON naming the shards, or one weights file beside
``config.json``; read as one group ``""``.

    gpt2-finetuned/   config.json  model.safetensors          (or model.safetensors.index.json + shards)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ckptboard.core.formats.hf_folder import hf_weight_files, read_hf_folder
from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.records import CheckpointFormat

__all__ = ["HfModel", "open_hf_folder"]


@register
class HfModel(Layout):
    name = "hf_model"
    format = CheckpointFormat.HF_SHARDED

    def detect(self, folder: Path) -> LayoutMatch | None:
        files = hf_weight_files(folder)
        return None if files is None else LayoutMatch(self, folder, files=files)

    def open(self, match: LayoutMatch, device: torch.device, trust: bool):
        return open_hf_folder(match, self.format, device)


def open_hf_folder(match: LayoutMatch, fmt: CheckpointFormat, device: torch.device):
    """The checkpoint of a Hugging Face folder: every shard's tensors in one group ``""``."""
    from ckptboard.core.containers import split_contents
    from ckptboard.core.reader import Checkpoint, _fill, _file_reader, _read_scalar

    if match.error is not None:
        raise match.error
    root, readers, metadata = read_hf_folder(match.path, lambda shard, label: _file_reader(shard, label)[0])
    ckpt = Checkpoint(match.path, fmt, device, _readers=readers)
    for reader in readers:
        ckpt.notes.extend(n for n in reader.notes if n not in ckpt.notes)
    ckpt.notes += match.notes
    return _fill(ckpt, split_contents(root, _read_scalar), {**metadata, **match.metadata})
