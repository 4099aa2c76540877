"""Megatron-Core ``dist_checkpointing`` with the ``torch_dist`` backend (``--ckpt-format torch_dist``, Megatron's
default): one DCP folder per iteration, beside ``latest_checkpointed_iteration.txt``.

    run/latest_checkpointed_iteration.txt
    run/iter_0000100/   .metadata  __0_0.distcp  __1_0.distcp  common.pt  metadata.json

Written by ``megatron/core/dist_checkpointing/serialization.py`` ``save`` through ``strategies/torch.py``
``TorchDistSaveShardedStrategy`` (DCP's own file format). DCP keys are Megatron's ShardedTensor keys: the model's
without a prefix (``embedding.word_embeddings.weight``; a block of identical layers is one tensor per parameter
with the layers stacked on a leading axis, ``decoder.layers.self_attention.linear_qkv.weight`` of shape
``(num_layers, …)``, saved as one chunk per layer and rank: listed per layer, ``decoder.layers.0.…``, each layer
read from its own chunks, the optimizer state split alike), the optimizer's ``optimizer.state.<exp_avg|exp_avg_sq|fp32_param>.<model key>`` (used for
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

import torch

from ckptboard.core.classify import OPTIMIZER_STATE_NAMES
from ckptboard.core.containers import Contents, split_contents
from ckptboard.core.errors import CheckpointError, CorruptCheckpointError
from ckptboard.core.formats.dcp import DcpReader
from ckptboard.core.formats.dcp_metadata import METADATA_NAME, DcpChunk, DcpItem
from ckptboard.core.formats.filereader import FileReader
from ckptboard.core.formats.safe_unpickle import LazyStorage, LazyTensor, contiguous_stride
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
_LAYERS_HERE = object()
_STACKED = re.compile(r"((?:^|.*\.)layers\.)(?!\d)(.+)")  # decoder.layers.<rest>: no layer index


@register(before="dcp")
class MegatronDist(Dcp):
    name = "megatron_dist"
    side_files = (COMMON_NAME,)

    def detect(self, folder: Path) -> LayoutMatch | None:
        config, common = folder / CONFIG_NAME, folder / COMMON_NAME
        if not (folder / METADATA_NAME).is_file() or not (config.is_file() or common.is_file()):
            return None
        if not config.is_file():  # an abandoned save is damaged; a recent one is retried (core/task.py, by mtime)
            raise CorruptCheckpointError(
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
        split, kept = _unstack(contents, reader, ckpt)
        if split:
            ckpt.notes.append(f"{split} layer-stacked tensors (Megatron's ShardedTensor keys, layers on dim 0) listed "
                              "per layer (decoder.layers.<i>.…), each read from its own chunks")
        if kept:
            ckpt.notes.append(f"{kept} layer-stacked tensors whose chunks span several layers are listed stacked: "
                              "their statistics cover all layers together")
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


class _Layers(FileReader):
    """One layer of a layer-stacked DCP tensor: its chunks (registered as an item of its own, shape ``(1, …)``) read
    by the folder's :class:`DcpReader`, the leading axis dropped. One layer in memory at a time."""

    def __init__(self, reader: DcpReader):
        super().__init__(reader.path)
        self.reader = reader

    def lazy(self, item: DcpItem) -> LazyTensor:
        shape = item.shape[1:]
        storage = LazyStorage(item.fqn, item.dtype, _numel(shape), reader=self)
        return LazyTensor(storage, 0, shape, contiguous_stride(shape), item.dtype)

    def materialise(self, lazy: LazyTensor, device: torch.device) -> torch.Tensor:
        item = self.reader.dcp.items[lazy.storage.key]
        return self.reader.materialise(self.reader.lazy(item), device).reshape(lazy.shape)

    def close(self) -> None:
        pass  # the DcpReader is the checkpoint's own reader and is closed with it


def _unstack(contents: Contents, reader: DcpReader, ckpt) -> tuple[int, int]:
    """Replace each layer-stacked model tensor, and its optimizer state, by one tensor per layer where every chunk
    holds exactly one layer (Megatron's per-layer ShardedTensors); ``(tensors split, tensors kept stacked)``."""
    layers = _Layers(reader)
    split, kept = 0, 0
    per_layer: dict[str, list[str]] = {}  # stacked key -> its per-layer keys
    for index, (group, tensors) in enumerate(contents.groups):
        out: dict[str, Any] = {}
        stacked: list[list[str]] = []
        for name, lazy in tensors.items():
            names = _layer_items(name, reader, layers) if _STACKED.fullmatch(name) else None
            if names is None:
                kept += bool(_STACKED.fullmatch(name))
                out[name] = lazy
                continue
            if not stacked:
                out[_LAYERS_HERE] = None  # the per-layer tensors go here, layer by layer
            split += 1
            per_layer[name] = names
            stacked.append(names)
        if stacked:
            ordered = [names[i] for i in range(max(map(len, stacked))) for names in stacked if i < len(names)]
            rebuilt: dict[str, Any] = {}
            for key, value in out.items():
                if key is _LAYERS_HERE:
                    rebuilt.update((n, layers.lazy(reader.dcp.items[n])) for n in ordered)
                else:
                    rebuilt[key] = value
            out = rebuilt
        contents.groups[index] = (group, out)
    for opt in contents.optimizers:
        params = []
        for param in opt.params:
            names = per_layer.get(param.param_id)
            if names is None:
                params.append(param)
                continue
            refs = {state: _layer_items(ref.storage.key, reader, layers) for state, ref in param.state_refs.items()}
            if any(v is None or len(v) != len(names) for v in refs.values()):
                params.append(param)  # state chunked otherwise: kept as it is (it then names no listed tensor)
                continue
            for i, name in enumerate(names):
                refs_i = {state: layers.lazy(reader.dcp.items[v[i]]) for state, v in refs.items()}
                params.append(type(param)(name, param.group_index,
                                          state_shapes={k: r.shape for k, r in refs_i.items()},
                                          state_dtypes=dict(param.state_dtypes), state_refs=refs_i,
                                          state_scalars=dict(param.state_scalars)))
        opt.params = params
    if split:
        ckpt._readers.append(layers)
    return split, kept


def _layer_items(key: str, reader: DcpReader, layers: _Layers) -> list[str] | None:
    """The per-layer item keys of the stacked item ``key`` (registered in ``reader.dcp.items``), or None when a
    chunk spans more than one layer."""
    item = reader.dcp.items.get(key)
    if item is None or not item.is_tensor or len(item.shape) < 2 or not item.chunks:
        return None
    if any(c.sizes[0] != 1 for c in item.chunks):
        return None
    m = _STACKED.fullmatch(key)
    names = []
    for layer in range(item.shape[0]):
        name = f"{m.group(1)}{layer}.{m.group(2)}" if m else f"{key}[{layer}]"
        chunks = [DcpChunk((0, *c.offsets[1:]), c.sizes, c.file, c.offset, c.length)
                  for c in item.chunks if c.offsets[0] == layer]
        if not chunks:
            return None
        reader.dcp.items[name] = DcpItem(name, item.dtype, (1, *item.shape[1:]), chunks)
        names.append(name)
    return names


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
