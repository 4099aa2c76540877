"""Hugging Face model folder (``save_pretrained``): an index JSON naming the shards, or one weights file beside
``config.json``; read as one group ``""``.

    gpt2-finetuned/   config.json  model.safetensors          (or model.safetensors.index.json + shards)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ckptboard.core.formats.hf_folder import hf_weight_files
from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.layouts._fileset import open_hf_folder
from ckptboard.core.records import CheckpointFormat

__all__ = ["HfModel"]


@register
class HfModel(Layout):
    name = "hf_model"
    format = CheckpointFormat.HF_SHARDED

    def detect(self, folder: Path) -> LayoutMatch | None:
        files = hf_weight_files(folder)
        return None if files is None else LayoutMatch(self, folder, files=files)

    def open(self, match: LayoutMatch, device: torch.device, trust: bool):
        return open_hf_folder(match, self.format, device)

