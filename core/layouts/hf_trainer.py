"""Hugging Face ``Trainer`` checkpoint (``checkpoint-N/``): a model folder plus ``optimizer.pt`` (for trainable),
``trainer_state.json`` (the step, and ``log_history`` as training scalars); scheduler, RNG and arguments ignored.

    run/checkpoint-500/   config.json  model.safetensors  optimizer.pt  trainer_state.json
                          scheduler.pt  rng_state.pth  training_args.bin        (ignored)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.formats.hf_folder import hf_weight_files
from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.layouts._fileset import open_hf_folder, read_optimizers
from ckptboard.core.records import CheckpointFormat, StepSource

__all__ = ["HfTrainer", "TRAINER_STATE", "read_trainer_state"]

TRAINER_STATE = "trainer_state.json"
_OPTIMIZER = "optimizer.pt"


def read_trainer_state(folder: Path) -> dict:
    """``trainer_state.json`` of ``folder`` as a dict; a damaged one names the folder."""
    path = folder / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(folder, f"{TRAINER_STATE} is not readable JSON ({e})") from e
    if not isinstance(state, dict):
        raise CorruptCheckpointError(folder, f"{TRAINER_STATE} holds {type(state).__name__}, not an object")
    return state


@register
class HfTrainer(Layout):
    name = "hf_trainer"
    format = CheckpointFormat.HF_TRAINER

    def detect(self, folder: Path) -> LayoutMatch | None:
        if not (folder / TRAINER_STATE).is_file():
            return None
        weights = hf_weight_files(folder)
        if weights is None:
            return None
        state = read_trainer_state(folder)
        optimizers = [folder / _OPTIMIZER] if (folder / _OPTIMIZER).is_file() else []
        step = state.get("global_step")
        ok = isinstance(step, int) and not isinstance(step, bool) and step >= 0
        return LayoutMatch(
            self, folder, files=[*weights, *optimizers, folder / TRAINER_STATE], optimizers=optimizers,
            logs=[folder / TRAINER_STATE], step=step if ok else None,
            step_source=StepSource.GLOBAL_STEP if ok else StepSource.NONE,
        )

    def open(self, match: LayoutMatch, device: torch.device, trust: bool):
        ckpt = open_hf_folder(match, self.format, device)
        try:
            ckpt.optimizers += read_optimizers(match.optimizers, match.path)
        except BaseException:
            ckpt.close()
            raise
        if match.step is not None:
            ckpt.step, ckpt.step_source = match.step, match.step_source
        return ckpt
