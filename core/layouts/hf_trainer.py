"""Hugging Face ``Trainer`` checkpoint (``checkpoint-N/``): a model folder plus ``optimizer.pt`` (for trainable),
``trainer_state.json`` (the step, and ``log_history`` as training scalars); scheduler, RNG and arguments ignored.

    run/checkpoint-500/   config.json  model.safetensors  optimizer.pt  trainer_state.json
                          scheduler.pt  rng_state.pth  training_args.bin        (ignored)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ckptboard.core.formats.hf_folder import hf_weight_files
from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.layouts._fileset import open_hf_folder, read_optimizers
from ckptboard.core.records import CheckpointFormat

__all__ = ["HfTrainer", "TRAINER_STATE"]

TRAINER_STATE = "trainer_state.json"
_OPTIMIZER = "optimizer.pt"


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
        optimizers = [folder / _OPTIMIZER] if (folder / _OPTIMIZER).is_file() else []
        # trainer_state.json (megabytes with a long log_history) is read when the checkpoint is opened, not here
        return LayoutMatch(self, folder, files=[*weights, *optimizers, folder / TRAINER_STATE], optimizers=optimizers,
                           logs=[folder / TRAINER_STATE])

    def open(self, match: LayoutMatch, device: torch.device, trust: bool):
        # read_hf_folder takes global_step (and epoch) from trainer_state.json into the metadata: the step
        ckpt = open_hf_folder(match, self.format, device)
        try:
            ckpt.optimizers += read_optimizers(match.optimizers, match.path, keep=ckpt._readers)
        except BaseException:
            ckpt.close()
            raise
        return ckpt
