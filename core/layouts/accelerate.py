"""accelerate ``Accelerator.save_state`` folder (``checkpoints/checkpoint_N/`` with automatic naming, or any folder
it wrote): ``model.safetensors``/``pytorch_model.bin`` and ``model_1.*`` … as groups named by file, ``optimizer*.bin``
for trainable; ``random_states_*.pkl``, ``scheduler*.bin``, ``sampler*.bin``, ``custom_checkpoint_*.pkl`` ignored.
The step is the folder's index: ``random_states``' ``step`` counts inside ``accumulate()`` only and resets each epoch.

    run/checkpoints/checkpoint_2/   model.safetensors  model_1.safetensors  optimizer.bin  optimizer_1.bin
                                    scheduler.bin  random_states_0.pkl
"""

from __future__ import annotations

import re
from pathlib import Path

from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.records import CheckpointFormat
from ckptboard.core.steps import step_from_name

__all__ = ["Accelerate"]

_MARKER = re.compile(r"random_states_\d+\.pkl|optimizer(?:_\d+)?\.bin")
_MODEL = re.compile(r"(model(?:_\d+)?)\.(?:safetensors|bin)|(pytorch_model(?:_\d+)?)\.bin")
_OPTIMIZER = re.compile(r"optimizer(?:_\d+)?\.bin")


def _index(name: str) -> int:
    digits = re.search(r"_(\d+)$", name)
    return int(digits.group(1)) if digits else 0


@register
class Accelerate(Layout):
    name = "accelerate"
    format = CheckpointFormat.ACCELERATE

    def detect(self, folder: Path) -> LayoutMatch | None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        if not any(_MARKER.fullmatch(n) for n in names):
            return None
        models = [(m.group(1) or m.group(2), folder / n) for n in names if (m := _MODEL.fullmatch(n))]
        if not models:
            raise CorruptCheckpointError(
                folder, "an accelerate save_state folder with no model file (model.safetensors or pytorch_model.bin)"
            )
        models.sort(key=lambda m: _index(m[0]))
        optimizers = sorted((folder / n for n in names if _OPTIMIZER.fullmatch(n)), key=lambda p: _index(p.stem))
        step, source = step_from_name(folder.name)
        return LayoutMatch(
            self, folder, files=[p for _, p in models] + optimizers, weights=models, optimizers=optimizers,
            step=step, step_source=source,
        )
