"""PEFT adapter folder (``PeftModel.save_pretrained``): the adapter's tensors, all trainable parameters (LoRA
``lora_A``/``lora_B``, IA3 vectors, ``modules_to_save`` copies); the base model's name from the config is shown.

    run/adapter-500/   adapter_config.json  adapter_model.safetensors   (or adapter_model.bin)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.layouts._fileset import open_file_set
from ckptboard.core.records import CheckpointFormat, TensorKind, Trainable
from ckptboard.core.steps import step_from_name

__all__ = ["Peft", "ADAPTER_RULE"]

ADAPTER_RULE = "peft:adapter"  # every floating-point tensor of an adapter file is a trained parameter
_CONFIG = "adapter_config.json"
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@register
class Peft(Layout):
    name = "peft"
    format = CheckpointFormat.PEFT

    def detect(self, folder: Path) -> LayoutMatch | None:
        if not (folder / _CONFIG).is_file():
            return None
        weights = next((folder / w for w in _WEIGHTS if (folder / w).is_file()), None)
        if weights is None:
            raise CorruptCheckpointError(folder, f"{_CONFIG} without {' or '.join(_WEIGHTS)}: the adapter is missing")
        try:
            config = json.loads((folder / _CONFIG).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptCheckpointError(folder, f"{_CONFIG} is not readable JSON ({e})") from e
        if not isinstance(config, dict):
            raise CorruptCheckpointError(folder, f"{_CONFIG} holds no JSON object")
        metadata = {k: config[k] for k in ("peft_type", "base_model_name_or_path", "base_model_class", "r",
                                          "lora_alpha", "task_type") if isinstance(config.get(k), (str, int, float))}
        base = metadata.get("base_model_name_or_path") or metadata.get("base_model_class")
        step, source = step_from_name(folder.name)
        return LayoutMatch(
            self, folder, files=[weights, folder / _CONFIG], weights=[("", weights)], metadata=metadata,
            step=step, step_source=source,
            notes=[f"PEFT {metadata.get('peft_type', 'adapter')} adapter of base model {base}"] if base else [],
        )

    def open(self, match: LayoutMatch, device: torch.device, trust: bool):
        ckpt = open_file_set(match, self.format, device)
        for info in ckpt.tensors:
            if info.dtype.startswith(("float", "bfloat", "complex")) or info.dtype in ("half", "double"):
                info.kind, info.trainable, info.source = TensorKind.PARAMETER, Trainable.TRUE, ADAPTER_RULE
        return ckpt
