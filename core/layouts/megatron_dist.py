"""Megatron-Core ``dist_checkpointing`` with the ``torch_dist`` backend (``--ckpt-format torch_dist``, Megatron's
default): one DCP folder per iteration, beside ``latest_checkpointed_iteration.txt``.

    run/latest_checkpointed_iteration.txt
    run/iter_0000100/   .metadata  __0_0.distcp  __1_0.distcp  common.pt  metadata.json

Written by ``megatron/core/dist_checkpointing/serialization.py`` ``save`` through ``strategies/torch.py``
``TorchDistSaveShardedStrategy`` (DCP's own file format). DCP keys are Megatron's ShardedTensor keys: the model's
without a prefix (``embedding.word_embeddings.weight``; a block of identical layers is one tensor per parameter
with the layers stacked on a leading axis, ``decoder.layers.self_attention.linear_qkv.weight`` of shape
``(num_layers, …)``), the optimizer's ``optimizer.state.<exp_avg|exp_avg_sq|fp32_param>.<model key>`` (used for
``trainable`` by name, never listed) or opaque ``optimizer.distributed.…`` buffers. ShardedObjects (TransformerEngine's
``…._extra_state/shard_<layer>_<layers>``, ``rng_state/shard_…``) are pickled values: counted, never read.
Non-tensor state (``iteration``, ``args``, param groups) is ``common.pt``, read by the restricted unpickler for the
step; Megatron-Core after July 2026 keeps it in the DCP as the value ``common_state`` instead, read the same way.
``metadata.json`` (``{"sharded_backend": "torch_dist", …}``) is written last: without it the save did not finish.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ckptboard.core.classify import OPTIMIZER_STATE_NAMES
from ckptboard.core.containers import Contents, split_contents
from ckptboard.core.errors import CheckpointError, CorruptCheckpointError, IncompleteCheckpointError
from ckptboard.core.formats.dcp import DcpReader
from ckptboard.core.formats.dcp_metadata import METADATA_NAME
from ckptboard.core.layouts import LayoutMatch, register
from ckptboard.core.layouts._dcp_values import ValueReader
from ckptboard.core.layouts.dcp import Dcp

__all__ = ["MegatronDist"]

CONFIG_NAME = "metadata.json"  # dist_checkpointing/core.py CONFIG_FNAME
COMMON_NAME = "common.pt"  # dist_checkpointing/strategies/common.py COMMON_STATE_FNAME
_COMMON_KEY = "common_state"  # serialization.py after the common strategy was deprecated
_BACKEND = "torch_dist"
_MAX_CONFIG = 1 << 16
# the distributed optimizer's fp32 master copy by model key: ``param`` (fully_reshardable), ``fp32_param`` (model space)
_STATES = OPTIMIZER_STATE_NAMES | {"param", "fp32_param"}
_EXTRA_STATE = re.compile(r"(.+\._extra_state)(?:/shard_[\d.]+_[\d.]+)?")
_STACKED = re.compile(r"(?:^|\.)layers\.(?!\d)")


@register(before="dcp")
class MegatronDist(Dcp):
    name = "megatron_dist"
    side_files = (COMMON_NAME,)

    def detect(self, folder: Path) -> LayoutMatch | None:
        config, common = folder / CONFIG_NAME, folder / COMMON_NAME
        if not (folder / METADATA_NAME).is_file() or not (config.is_file() or common.is_file()):
            return None
        if not config.is_file():
            raise IncompleteCheckpointError(
                folder, f"a Megatron dist checkpoint without {CONFIG_NAME}, which Megatron writes last: the save "
                "did not finish (or is still running)"
            )
        backend = _backend(config)
        if backend is None:
            return None  # some other tool's metadata.json beside a DCP folder
        if backend != _BACKEND:
            raise CorruptCheckpointError(
                folder, f"a Megatron dist checkpoint with the {backend!r} backend: only {_BACKEND!r} is read"
            )
        match = super().detect(folder)
        if match is not None:
            match.files.append(config)
        return match

    def split_key(self, fqn: str) -> tuple[str, str, str]:
        root, _, rest = fqn.partition(".")
        if root == "optimizer":
            head, _, tail = rest.partition(".")
            state, _, param = tail.partition(".")
            return "optimizer", root, f"{param}.{state}" if head == "state" and state in _STATES and param else ""
        return "model", "", fqn

    def open(self, match: LayoutMatch, device, trust: bool):
        ckpt = super().open(match, device, trust)
        _param_groups_from_common(ckpt)
        return ckpt

    def _contents(self, match: LayoutMatch, reader: DcpReader, ckpt) -> tuple[Contents, dict[str, Any]]:
        contents, metadata = super()._contents(match, reader, ckpt)
        metadata["megatron_backend"] = _BACKEND
        extra = {m.group(1) for fqn, item in reader.dcp.items.items()
                 if not item.is_tensor and (m := _EXTRA_STATE.fullmatch(fqn))}
        if extra:
            values = sum(1 for fqn in reader.dcp.items if _EXTRA_STATE.fullmatch(fqn))
            metadata["megatron_extra_state"] = len(extra)
            ckpt.notes.append(f"{len(extra)} TransformerEngine _extra_state entries ({values} pickled values: FP8 "
                              "scaling state): non-tensor extra state, not listed and not read")
        if not contents.optimizers and any(self.split_key(f)[0] == "optimizer" for f in reader.dcp.items):
            ckpt.notes.append("the distributed optimizer's state is saved as flat buffers (dp_reshardable), not by "
                              "parameter: it tells nothing about trainable")
        if any(_STACKED.search(name) for _, tensors in contents.groups for name in tensors):
            ckpt.notes.append("the layers of each transformer block are stacked on dim 0 (Megatron's ShardedTensor "
                              "keys): statistics cover all layers of a parameter together")
        item = reader.dcp.items.get(_COMMON_KEY)
        if item is not None and not item.is_tensor:
            metadata.update(_common_state(match, item, ckpt))
        return contents, metadata


def _backend(config: Path) -> str | None:
    """``sharded_backend`` of Megatron's ``metadata.json``, or None when the file is not Megatron's."""
    with open(config, "rb") as f:
        raw = f.read(_MAX_CONFIG + 1)
    try:
        data = json.loads(raw) if len(raw) <= _MAX_CONFIG else None
    except ValueError:
        return None
    backend = data.get("sharded_backend") if isinstance(data, dict) else None
    return backend if isinstance(backend, str) else None


def _common_state(match: LayoutMatch, item, ckpt) -> dict[str, Any]:
    """The non-tensor state saved inside the DCP (``[state_dict]``, pickled by ``torch.save``), as metadata."""
    from ckptboard.core.reader import _read_scalar

    try:
        with ValueReader(match.path) as values:
            value = values.read(item)
    except CheckpointError as e:
        ckpt.notes.append(f"{_COMMON_KEY} is not read ({e.problem})")
        return {}
    if isinstance(value, list) and len(value) == 1:  # strategies/torch.py packs each ShardedObject's data in a list
        value = value[0]
    return split_contents(value, _read_scalar).metadata if isinstance(value, dict) else {}


def _param_groups_from_common(ckpt) -> None:
    """The param groups saved in the common state (``optimizer.optimizer.param_groups``: lr, betas, eps and the
    group's ``step``) for the gradient statistics. Megatron does not save which parameters a group holds, so they
    are used only when every group has the same settings."""
    groups = ckpt.metadata.get("optimizer", {})
    groups = groups.get("optimizer", {}).get("param_groups") if isinstance(groups, dict) else None
    if not ckpt.optimizers or not isinstance(groups, list) or not groups:
        return
    keys = ("lr", "betas", "eps", "step")
    settings = [{k: g.get(k) for k in keys} if isinstance(g, dict) else None for g in groups]
    if any(s != settings[0] for s in settings):
        ckpt.notes.append(f"{len(groups)} optimizer param groups with different settings, and Megatron does not save "
                          "which parameters each holds: no gradient statistics")
        return
    hyper = {k: v for k, v in groups[0].items() if k != "params"}
    step = settings[0]["step"]
    for opt in ckpt.optimizers:
        opt.hyperparams = [hyper]
        for param in opt.params:
            param.group_index = 0
            if isinstance(step, (int, float)) and not isinstance(step, bool):
                param.state_scalars.setdefault("step", float(step))
