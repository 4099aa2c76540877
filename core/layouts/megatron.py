"""Megatron-LM legacy checkpoints (``--ckpt-format torch``): one folder per iteration, one file per model-parallel
rank, beside ``latest_checkpointed_iteration.txt``.

    run/latest_checkpointed_iteration.txt
    run/iter_0000100/   mp_rank_00/model_optim_rng.pt  mp_rank_01/model_optim_rng.pt    (tensor parallel)
                        mp_rank_00_000/model_optim_rng.pt …                            (tensor x pipeline)

Each rank's file (``megatron/training/checkpointing.py``: ``args``, ``checkpoint_version``, ``iteration``, ``model``
or ``model0``/``model1`` … for virtual pipeline stages, ``optimizer``, ``opt_param_scheduler``, ``rng_state``) is a
group named by its rank folder (``mp_rank_01/model``): tensor-parallel ranks hold different slices of the same
parameters, so they stay separate groups and are not concatenated. The optimizer's fp32 master copies are not
listed. The step is ``iteration`` (else the folder's number). ``torch_dist`` checkpoints: :mod:`.megatron_dist`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.records import CheckpointFormat

__all__ = ["Megatron"]

_RANK = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?")
_FILES = ("model_optim_rng.pt", "model_rng.pt")  # model_rng.pt: with the distributed optimizer (distrib_optim.pt)


@register
class Megatron(Layout):
    name = "megatron"
    format = CheckpointFormat.MEGATRON

    def detect(self, folder: Path) -> LayoutMatch | None:
        ranks = sorted(d for d in folder.iterdir() if d.is_dir() and _RANK.fullmatch(d.name))
        weights = []
        for rank in ranks:
            file = next((rank / f for f in _FILES if (rank / f).is_file()), None)
            if file is not None:
                weights.append((rank.name, file))
        if not weights:
            return None
        notes = [f"{len(weights)} model-parallel ranks, one group each: tensor-parallel slices are not concatenated"]
        # no step here: the file's ``iteration`` decides, the folder's name (iter_0000100) is the fallback
        return LayoutMatch(self, folder, files=[f for _, f in weights], weights=weights,
                           keep_groups=r"model\d*(?:/|$)", notes=notes if len(weights) > 1 else [])
