"""``torch.distributed.checkpoint`` folders: FSDP/FSDP2 ``dcp.save``, torchtitan ``step-N/``, Lightning's sharded
``*.ckpt/`` folders (Megatron's ``torch_dist``, a DCP folder with its own keys: :mod:`.megatron_dist`).

    run/step-100/   .metadata  __0_0.distcp  __1_0.distcp  (meta.pt: Lightning's non-tensor state: metadata and step)

Keys are flattened state_dict paths. ``model.<name>`` tensors form group ``model``; other top-level tensors group
``""``. Optimizer entries (``optim.state.<name>.exp_avg``, ``optimizer.…``, ``optimizer_0.…``, or a bare
``state.<name>.exp_avg``) are never listed as tensors: they name the parameters they hold, which gives ``trainable``
by name. Non-tensor values (hyperparameters, dataloader and scheduler state) are counted, not read. The step
comes from Lightning's ``meta.pt`` (``global_step``) when there is one, else from the folder's name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ckptboard.core.classify import OPTIMIZER_STATE_NAMES
from ckptboard.core.containers import Contents
from ckptboard.core.errors import CheckpointError
from ckptboard.core.formats.dcp import DcpReader
from ckptboard.core.formats.dcp_metadata import METADATA_NAME, DcpItem
from ckptboard.core.layouts import Layout, LayoutMatch, register
from ckptboard.core.layouts._dcp_values import ValueReader
from ckptboard.core.records import CheckpointFormat, OptimizerParam, OptimizerState

__all__ = ["Dcp", "split_key", "side_file_metadata"]

_OPTIMIZER_ROOT = re.compile(r"optim(?:izer)?s?(?:_\d+)?")
_MODEL_ROOT = "model"
_LIGHTNING_META = "meta.pt"
# the param-group settings read (the gradient statistics need lr, betas, eps, amsgrad; inspect shows them all)
_HYPERPARAMS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "momentum", "dampening", "nesterov", "maximize")


@register
class Dcp(Layout):
    name = "dcp"
    format = CheckpointFormat.DCP
    side_files: tuple[str, ...] = (_LIGHTNING_META,)  # non-tensor state beside the DCP files, read for metadata

    def detect(self, folder: Path) -> LayoutMatch | None:
        metadata = folder / METADATA_NAME
        if not metadata.is_file():
            return None
        shards = sorted(p for p in folder.iterdir() if p.suffix == ".distcp" and p.is_file())
        if not shards:
            with open(metadata, "rb") as f:
                if f.read(1) != b"\x80":  # no pickle: some other tool's .metadata
                    return None
            # every shard missing: still this layout, so that opening says which file is missing
        extra = [folder / name for name in self.side_files if (folder / name).is_file()]
        return LayoutMatch(self, folder, files=[metadata, *shards, *extra])

    def split_key(self, fqn: str) -> tuple[str, str, str]:
        """``(role, where, name)`` of one flattened key (see :func:`split_key`)."""
        return split_key(fqn)

    def open(self, match: LayoutMatch, device: torch.device, trust: bool):
        from ckptboard.core.reader import Checkpoint, _fill

        if match.error is not None:
            raise match.error
        reader = DcpReader(match.path)
        ckpt = Checkpoint(match.path, self.format, device, _readers=[reader])
        try:
            contents, metadata = self._contents(match, reader, ckpt)
            for name in self.side_files:
                metadata.update(side_file_metadata(match.path, name, ckpt))
        except BaseException:
            ckpt.close()
            raise
        return _fill(ckpt, contents, metadata)

    def _contents(self, match: LayoutMatch, reader: DcpReader, ckpt) -> tuple[Contents, dict[str, Any]]:
        contents = Contents()
        groups: dict[str, dict] = {}
        states: dict[str, dict[str, OptimizerParam]] = {}
        state_bytes: dict[str, int] = {}
        settings: dict[str, list[tuple[str, str, DcpItem]]] = {}
        values = 0
        for fqn, item in reader.dcp.items.items():
            role, where, name = self.split_key(fqn)
            if not item.is_tensor:
                values += 1
                if (setting := _group_setting(fqn)) is not None:  # bare param_groups.…: torchtitan's flattening
                    settings.setdefault(where if role == "optimizer" else "", []).append((*setting, item))
                continue
            if role == "model":
                groups.setdefault(where, {})[name] = reader.lazy(item)
            elif role == "optimizer":
                state_bytes[where] = state_bytes.get(where, 0) + _nbytes(item)
                if name:
                    param, _, state = name.rpartition(".")
                    entry = states.setdefault(where, {}).setdefault(param, OptimizerParam(param, 0))
                    entry.state_shapes[state] = item.shape
                    entry.state_dtypes[state] = str(item.dtype).removeprefix("torch.")
                    entry.state_refs[state] = reader.lazy(item)
        contents.groups = list(groups.items())
        with ValueReader(match.path) as values_reader:
            for root, params in states.items():
                opt = OptimizerState(root, list(params.values()), by_name=True, state_nbytes=state_bytes[root])
                _param_groups(opt, settings.get(root, []), values_reader, ckpt.notes)
                contents.optimizers.append(opt)
        files = {chunk.file for item in reader.dcp.items.values() for chunk in item.chunks}
        return contents, {"dcp_version": reader.dcp.version, "dcp_files": len(files), "dcp_values": values}


def split_key(fqn: str) -> tuple[str, str, str]:
    """``(role, where, name)``: ``("model", group, name)``, ``("optimizer", root, "<param>.<state>")`` for state
    entries, ``("optimizer", root, "")`` for other optimizer entries."""
    root, _, rest = fqn.partition(".")
    if _OPTIMIZER_ROOT.fullmatch(root):
        head, _, tail = rest.partition(".")
        return "optimizer", root, tail if head == "state" and "." in tail else ""
    if root == "state" and rest.rpartition(".")[2] in OPTIMIZER_STATE_NAMES and "." in rest:
        return "optimizer", "", rest  # torchtitan's flattened optimizer, beside the model keys
    if root == _MODEL_ROOT and rest:
        return "model", _MODEL_ROOT, rest
    return "model", "", fqn


def _group_setting(fqn: str) -> tuple[str, str] | None:
    """``(where, key)`` of an optimizer's param-group entry: ``where`` is the group's index (``get_state_dict``'s
    nested ``param_groups.0.lr``) or a parameter's name (``flatten_optimizer_state_dict``: ``param_groups.<fqn>.lr``,
    torchtitan); None for other keys."""
    root, _, rest = fqn.partition(".")
    head, _, tail = rest.partition(".") if _OPTIMIZER_ROOT.fullmatch(root) else (root, "", rest)
    where, _, key = tail.rpartition(".")
    return (where, key) if head == "param_groups" and where and key else None


def _param_groups(opt: OptimizerState, settings: list[tuple[str, str, DcpItem]], values: ValueReader,
                  notes: list[str]) -> None:
    """Fill ``opt.hyperparams`` and each parameter's ``group_index`` from the saved param-group entries: nested
    groups list their parameters' names in ``params``; flattened ones repeat the settings per parameter (params
    with equal settings share one group)."""
    wanted = {"params", *_HYPERPARAMS}
    found: dict[str, dict] = {}
    for where, key, item in settings:
        if key not in wanted:
            continue
        try:
            found.setdefault(where, {})[key] = values.read(item)
        except CheckpointError as e:
            notes.append(f"optimizer {opt.key_path or '<root>'!r}: {item.fqn} is not read ({e.problem})")
    by_param = {p.param_id: p for p in opt.params}
    nested = all(w.isdigit() and "params" in s for w, s in found.items())
    for where, setting in sorted(found.items(), key=lambda ws: int(ws[0]) if nested else 0):
        members = setting.pop("params", None) if nested else [where]
        hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in setting.items() if _plain(v)}
        if hyper not in opt.hyperparams:
            opt.hyperparams.append(hyper)
        for name in members if isinstance(members, list) else ():
            if isinstance(name, str) and name in by_param:
                by_param[name].group_index = opt.hyperparams.index(hyper)


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def side_file_metadata(folder: Path, name: str, ckpt) -> dict:
    """The metadata of a ``torch.save`` file of non-tensor state beside the DCP files (Lightning's ``meta.pt``:
    ``global_step``, ``epoch``; Megatron's ``common.pt``: ``iteration``, ``args``), read by the restricted unpickler
    (no tensor data); {} with a note when it is absent or cannot be read."""
    from ckptboard.core.containers import split_contents
    from ckptboard.core.reader import _file_reader, _read_scalar

    meta = folder / name
    if not meta.is_file():
        return {}
    try:
        reader = _file_reader(meta)[0]
    except CheckpointError as e:
        ckpt.notes.append(f"{name} is not read ({e.problem})")
        return {}
    try:
        found = split_contents(reader.read_root(), _read_scalar)
    except CheckpointError as e:
        ckpt.notes.append(f"{name} is not read ({e.problem})")
        return {}
    finally:
        reader.close()
    ckpt.skipped_globals += [g for g in reader.skipped_globals if g not in ckpt.skipped_globals]
    return found.metadata


def _nbytes(item: DcpItem) -> int:
    numel = 1
    for n in item.shape:
        numel *= n
    return numel * item.dtype.itemsize
