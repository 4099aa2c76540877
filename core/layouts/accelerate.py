"""accelerate ``Accelerator.save_state`` folder (``checkpoints/checkpoint_N/`` with automatic naming, or any folder
it wrote): ``model.safetensors``/``pytorch_model.bin`` and ``model_1.*`` … as groups named by file, ``optimizer*.bin``
for trainable; ``random_states_*.pkl``, ``scheduler*.bin``, ``sampler*.bin``, ``custom_checkpoint_*.pkl`` ignored.
The step is the folder's index: ``random_states``' ``step`` counts inside ``accumulate()`` only and resets each epoch.

    run/checkpoints/checkpoint_2/   model.safetensors  model_1.safetensors  optimizer.bin  optimizer_1.bin
                                    scheduler.bin  random_states_0.pkl
    run/checkpoints/checkpoint_2/   pytorch_model_fsdp_0/  optimizer_0/  random_states_0.pkl  random_states_1.pkl

Under FSDP (``utils/fsdp_utils.py`` ``save_fsdp_model`` / ``save_fsdp_optimizer``): ``SHARDED_STATE_DICT`` writes
DCP folders ``pytorch_model_fsdp_N/`` (keys ``model.…``, a group named by the folder) and ``optimizer_N/`` (keys
``optimizer.state.<name>.…``: trainable and gradients by name); ``FULL_STATE_DICT`` writes ``pytorch_model_fsdp.bin``
(``…_N.bin``) beside ``optimizer.bin``. Per-rank files (``pytorch_model_fsdp_0_rank1.bin``: ``LOCAL_STATE_DICT`` or
``use_dcp=False``) hold each rank's flat shard and are refused with a message.
"""

from __future__ import annotations

import re
from pathlib import Path

from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.formats.dcp_metadata import METADATA_NAME
from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.records import CheckpointFormat
from ckptboard.core.steps import step_from_name

__all__ = ["Accelerate"]

_MARKER = re.compile(r"random_states_\d+\.pkl|optimizer(?:_\d+)?\.bin")
_MODEL = re.compile(r"(model(?:_\d+)?)\.(?:safetensors|bin)|(pytorch_model(?:_fsdp)?(?:_\d+)?)\.bin")
_OPTIMIZER = re.compile(r"optimizer(?:_\d+)?\.bin")
_FSDP_MODEL_DIR = re.compile(r"pytorch_model_fsdp_\d+")  # DCP folders: SHARDED_STATE_DICT
_FSDP_OPTIMIZER_DIR = re.compile(r"optimizer_\d+")
_FSDP_PER_RANK = re.compile(r"(?:pytorch_model_fsdp|optimizer)(?:_\d+)?_rank\d+\.bin")


def _index(name: str) -> int:
    digits = re.search(r"_(\d+)$", name)
    return int(digits.group(1)) if digits else 0


@register
class Accelerate(Layout):
    name = "accelerate"
    format = CheckpointFormat.ACCELERATE

    def detect(self, folder: Path) -> LayoutMatch | None:
        entries = sorted(folder.iterdir())
        names = [p.name for p in entries if p.is_file()]
        if not any(_MARKER.fullmatch(n) for n in names):
            return None
        per_rank = [n for n in names if _FSDP_PER_RANK.fullmatch(n)]
        if per_rank:
            raise CorruptCheckpointError(
                folder, f"FSDP per-rank files ({per_rank[0]} …: LOCAL_STATE_DICT or use_dcp=False) hold each rank's "
                "flat shard, which ckptboard does not read; save with SHARDED_STATE_DICT (DCP) or FULL_STATE_DICT"
            )
        dcp_dirs = [p for p in entries if p.is_dir() and (p / METADATA_NAME).is_file()]
        models = [(m.group(1) or m.group(2), folder / n) for n in names if (m := _MODEL.fullmatch(n))]
        models += [(p.name, p) for p in dcp_dirs if _FSDP_MODEL_DIR.fullmatch(p.name)]
        if not models:
            raise CorruptCheckpointError(
                folder, "an accelerate save_state folder with no model file (model.safetensors, pytorch_model.bin "
                "or an FSDP pytorch_model_fsdp_0/ folder)"
            )
        models.sort(key=lambda m: _index(m[0]))
        optimizers = sorted((folder / n for n in names if _OPTIMIZER.fullmatch(n)), key=lambda p: _index(p.stem))
        optimizers += [p for p in dcp_dirs if _FSDP_OPTIMIZER_DIR.fullmatch(p.name)]
        step, source = step_from_name(folder.name)
        files = [f for _, p in models for f in _identity(p)] + [f for p in optimizers for f in _identity(p)]
        return LayoutMatch(self, folder, files=files, weights=models, optimizers=optimizers, step=step,
                           step_source=source)


def _identity(path: Path) -> list[Path]:
    """The files that identify a weights or optimizer entry: the file, or a DCP folder's ``.metadata`` and shards."""
    if not path.is_dir():
        return [path]
    return [path / METADATA_NAME] + sorted(p for p in path.iterdir() if p.suffix == ".distcp" and p.is_file())
