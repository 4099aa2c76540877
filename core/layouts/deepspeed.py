"""DeepSpeed ``engine.save_checkpoint`` folders (``global_stepN/`` beside a ``latest`` file naming the newest tag).

    run/latest  zero_to_fp32.py
    run/global_step100/   mp_rank_00_model_states.pt                       (ZeRO 0-2: full module weights)
                          zero_pp_rank_0_mp_rank_00_optim_states.pt …      (ignored under ZeRO 0-2)
    run/global_step200/   zero_pp_rank_R_mp_rank_00_model_states.pt        (ZeRO-3: buffers, shapes, frozen pieces)
                          zero_pp_rank_R_mp_rank_00_optim_states.pt        (ZeRO-3: the fp32 flat partitions)

The model-states file's ``param_shapes`` (the optimizer's parameters), ``frozen_param_shapes`` and ``buffer_names``
give exact verdicts (source ``deepspeed:…``); ``shared_params`` ties. Under ZeRO-3 each weight is rebuilt from
the ranks' flat partitions one tensor at a time, or (a large one) summarised rank slice by rank slice
(:mod:`ckptboard.core.formats.deepspeed_zero`); shard tasks split it by optim-states file (:func:`ckptboard.core.shards.data_files`).
With several
model-parallel ranks (tensor parallelism: ``mp_world_size`` > 1), each rank's weights are a group named ``mp_rank_XX``
(its slices are not concatenated: a note says so): under ZeRO 0-2 its ``mp_rank_XX_model_states.pt``; under ZeRO-3
rebuilt from ``zero_pp_rank_R_mp_rank_XX_*`` alone, as each model-parallel rank partitions its own slice over the
data-parallel ranks (``zero_to_fp32.py`` itself reads ``mp_rank_00`` only). The step is the tag's number
(``global_step100``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ckptboard.core.containers import Contents, is_tensor
from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.formats.deepspeed_zero import ZeroPiece, Zero3Reader, partitioned_numel
from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.records import CheckpointFormat, TensorKind, Trainable
from ckptboard.core.steps import step_from_name

__all__ = ["DeepSpeed", "TRAINED", "FROZEN", "NOT_TRAINED", "BUFFER"]

TRAINED = "deepspeed:param_shapes"  # in the optimizer's parameter groups
FROZEN = "deepspeed:frozen_param_shapes"
NOT_TRAINED = "deepspeed:not-in-param_shapes"  # ZeRO-1 keeps no frozen_param_shapes: absent from the optimizer
BUFFER = "deepspeed:buffer_names"

_MODEL = re.compile(r"mp_rank_(\d+)_model_states\.pt")
_ZERO3_MODEL = re.compile(r"zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt")
_OPTIM = re.compile(r"(?:bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")


@register
class DeepSpeed(Layout):
    name = "deepspeed"
    format = CheckpointFormat.DEEPSPEED

    def detect(self, folder: Path) -> LayoutMatch | None:
        names = {p.name for p in folder.iterdir() if p.is_file()}
        models = sorted((n for n in names if _MODEL.fullmatch(n)), key=lambda n: int(_MODEL.fullmatch(n).group(1)))
        zero3 = sorted((n for n in names if _ZERO3_MODEL.fullmatch(n)), key=lambda n: _ranks(_ZERO3_MODEL, n))
        optims = sorted((n for n in names if _OPTIM.fullmatch(n)), key=lambda n: _ranks(_OPTIM, n))
        if not (models or zero3 or optims):
            return None
        if not (models or zero3):
            raise CorruptCheckpointError(
                folder, "a DeepSpeed checkpoint folder without its model-states file (mp_rank_00_model_states.pt or "
                "zero_pp_rank_0_mp_rank_00_model_states.pt): the weights' names and shapes are missing"
            )
        step, source = step_from_name(folder.name)
        files = [folder / n for n in (models or zero3)] + ([folder / n for n in optims] if zero3 else [])
        return LayoutMatch(self, folder, files=files, step=step, step_source=source,
                           metadata={"zero3": bool(zero3 and not models)})

    def open(self, match: LayoutMatch, device: torch.device, trust: bool):
        from ckptboard.core.reader import Checkpoint, _fill

        if match.error is not None:
            raise match.error
        ckpt = Checkpoint(match.path, self.format, device)
        try:
            if match.metadata["zero3"]:
                contents, verdicts, metadata = _zero3(match, ckpt)
            else:
                contents, verdicts, metadata = _zero012(match, ckpt)
        except BaseException:
            ckpt.close()
            raise
        _fill(ckpt, contents, metadata)
        if match.step is not None:
            ckpt.step, ckpt.step_source = match.step, match.step_source
        for info in ckpt.tensors:
            verdict = verdicts.get(info.raw_name)
            if verdict is not None:
                info.kind, info.trainable, info.source = verdict
        return ckpt


def _open_root(ckpt, path: Path) -> Any:
    from ckptboard.core.reader import _file_reader

    reader = _file_reader(path)[0]
    ckpt._readers.append(reader)
    ckpt.skipped_globals += [g for g in reader.skipped_globals if g not in ckpt.skipped_globals]
    root = reader.read_root()
    if not isinstance(root, Mapping):
        raise CorruptCheckpointError(ckpt.path, f"{path.name} holds no dict")
    return root, reader


def _model_state(ckpt, path: Path) -> tuple[Mapping, Any]:
    root, reader = _open_root(ckpt, path)
    if not isinstance(root.get("module"), Mapping) or not isinstance(root.get("buffer_names"), list):
        raise CorruptCheckpointError(ckpt.path, f"{path.name} has no module/buffer_names: not DeepSpeed model states")
    return root, reader


def _shapes(value: Any) -> dict[str, tuple[int, ...]]:
    """``param_shapes`` (a list of per-group dicts) or ``frozen_param_shapes`` (one dict) as one ordered dict."""
    groups = value if isinstance(value, list) else [value] if isinstance(value, Mapping) else []
    return {str(k): tuple(int(n) for n in v) for g in groups if isinstance(g, Mapping) for k, v in g.items()}


def _verdicts(root: Mapping, names: list[str]) -> dict[str, tuple]:
    trained, frozen = _shapes(root.get("param_shapes")), _shapes(root.get("frozen_param_shapes"))
    buffers = {str(b) for b in root["buffer_names"]}
    out = {}
    for name in names:
        if name in buffers:
            out[name] = (TensorKind.BUFFER, Trainable.FALSE, BUFFER)
        elif name in trained:
            out[name] = (TensorKind.PARAMETER, Trainable.TRUE, TRAINED)
        elif name in frozen:
            out[name] = (TensorKind.PARAMETER, Trainable.FALSE, FROZEN)
        elif root.get("param_shapes") is not None:
            out[name] = (TensorKind.PARAMETER, Trainable.FALSE, NOT_TRAINED)
    return out


def _metadata(root: Mapping) -> dict[str, Any]:
    keys = ("global_steps", "global_samples", "skipped_steps", "dp_world_size", "mp_world_size", "ds_version")
    return {k: root[k] for k in keys if isinstance(root.get(k), (int, float, str))}


def _zero012(match: LayoutMatch, ckpt) -> tuple[Contents, dict, dict]:
    contents, verdicts, metadata = Contents(), {}, {}
    for file in match.files:
        root, _ = _model_state(ckpt, file)
        module = {str(k): v for k, v in root["module"].items() if is_tensor(v)}
        group = "" if len(match.files) == 1 else file.name.removesuffix("_model_states.pt")
        contents.groups.append((group, module))
        verdicts.update(_verdicts(root, list(module)))
        metadata = metadata or _metadata(root)
    if len(match.files) > 1:
        ckpt.notes.append(f"{len(match.files)} model-parallel ranks, one group each (mp_rank_XX)")
    return contents, verdicts, metadata


def _ranks(pattern: re.Pattern, name: str) -> tuple[int, int]:
    """``(model-parallel rank, data-parallel rank)`` of a ZeRO file name: files sort by slice, then partition."""
    m = pattern.fullmatch(name)
    return int(m.group(2)), int(m.group(1))


def _zero3(match: LayoutMatch, ckpt) -> tuple[Contents, dict, dict]:
    by_mp: dict[int, list[Path]] = {}
    for file in match.files:
        pattern = _ZERO3_MODEL if file.name.endswith("_model_states.pt") else _OPTIM
        by_mp.setdefault(_ranks(pattern, file.name)[0], []).append(file)
    contents, verdicts, metadata = Contents(), {}, {}
    for mp_rank, files in sorted(by_mp.items()):
        tensors, rank_verdicts, metadata = _zero3_slice(files, ckpt)
        group = "" if len(by_mp) == 1 else f"mp_rank_{mp_rank:02d}"
        contents.groups.append((group, tensors))
        verdicts.update(rank_verdicts)
    if len(by_mp) > 1:
        ckpt.notes.append(f"{len(by_mp)} model-parallel ranks, one group each (mp_rank_XX): tensor-parallel slices "
                          "are not concatenated")
    return contents, verdicts, metadata


def _zero3_slice(files: list[Path], ckpt) -> tuple[dict[str, Any], dict, dict]:
    """One model-parallel rank's weights, rebuilt from its data-parallel ranks' partitions."""
    models = [f for f in files if f.name.endswith("_model_states.pt")]
    optims = [f for f in files if f.name.endswith("_optim_states.pt")]
    if not models:
        raise CorruptCheckpointError(ckpt.path, f"{optims[0].name} has no model-states file beside it")
    roots = [_model_state(ckpt, f)[0] for f in models]
    root = roots[0]
    world = len(models)
    if len(optims) != world:
        raise CorruptCheckpointError(
            ckpt.path, f"{world} ZeRO-3 model-states files but {len(optims)} optim-states files"
        )
    flat: list[list] = []
    for file in optims:
        state = _open_root(ckpt, file)[0].get("optimizer_state_dict")
        groups = state.get("fp32_flat_groups") if isinstance(state, Mapping) else None
        if not isinstance(groups, list) or not all(is_tensor(g) for g in groups):
            raise CorruptCheckpointError(ckpt.path, f"{file.name} has no optimizer_state_dict.fp32_flat_groups")
        flat.append(groups)
    pieces: dict[str, ZeroPiece] = {}
    for g, shapes in enumerate(root.get("param_shapes") or []):
        offset = 0
        for name, shape in _shapes(shapes).items():
            per_rank = partitioned_numel(_prod(shape), world)
            pieces[name] = ZeroPiece(name, shape, [ranks[g] for ranks in flat], offset, per_rank,
                                     tuple(f.name for f in optims))
            offset += per_rank
        if any(offset != ranks[g].numel for ranks in flat):
            raise CorruptCheckpointError(ckpt.path, f"param group {g}: consumed {offset} elements of each rank's "
                                         f"{flat[0][g].numel}: the partitions do not match param_shapes")
    for name, shape in _shapes(root.get("frozen_param_shapes")).items():
        fragments = [r.get("frozen_param_fragments", {}).get(name) for r in roots]
        if not all(is_tensor(f) for f in fragments):
            raise CorruptCheckpointError(ckpt.path, f"frozen parameter {name} lacks a rank's fragment")
        pieces[name] = ZeroPiece(name, shape, fragments, 0, fragments[0].numel, tuple(f.name for f in models))
    zero = Zero3Reader(ckpt.path, pieces, [])
    ckpt._readers.append(zero)
    module = root["module"]
    tensors: dict[str, Any] = {}
    for name, value in module.items():
        name = str(name)
        if name in pieces:
            tensors[name] = zero.lazy(pieces[name])
        elif is_tensor(value) and name in root["buffer_names"]:
            tensors[name] = value
    for alias, target in (root.get("shared_params") or {}).items():
        if target in tensors and alias not in tensors:
            tensors[str(alias)] = tensors[target]
    note = f"ZeRO-3 over {world} data-parallel ranks: weights rebuilt from the fp32 partitions"
    if note not in ckpt.notes:
        ckpt.notes.append(note)
    return tensors, _verdicts(root, list(tensors)), _metadata(root)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
