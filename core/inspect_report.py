"""The ``ckptboard inspect --json`` object: one JSON-safe dict per checkpoint, built from a classified checkpoint.

Keys (stable; other tools parse them):

    path, format, step, step_source, metadata, skipped_globals, notes,
    model_source  which model decided: "--model", "pickled module", "config.json (PATH)", or null (the rules)
    groups      [{name, stripped_prefix, tensors}]
    optimizers  [{key_path, params, param_groups, states, state_bytes, hyperparams}]
    tensors     [{group, name, raw_name, kind, trainable, source, shape, dtype, numel, nbytes, module, tied_to}]
    totals      {tensors, parameter_tensors, buffer_tensors, parameters, trainable_parameters, frozen_parameters,
                 unknown_parameters, buffers, parameter_bytes, buffer_bytes, bytes, bytes_by_dtype, tied_tensors}
    model_report  (only when a model was given) ModelReport.to_json()

``trainable`` is true/false/null (unknown); element and byte totals count a tied tensor once (its first name).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ckptboard.core.model_report import ModelReport
from ckptboard.core.records import OptimizerState, TensorInfo, TensorKind, Trainable

__all__ = ["inspect_report", "tensor_row", "totals", "optimizer_summary"]


def inspect_report(ckpt: Any, report: ModelReport | None = None, model_source: str | None = None) -> dict[str, Any]:
    """The JSON object for a classified checkpoint (see the module docstring for its keys)."""
    tensors = [info for group in ckpt.groups for info in group.tensors]
    out: dict[str, Any] = {
        "path": str(ckpt.path),
        "format": str(ckpt.format),
        "step": ckpt.step,
        "step_source": str(ckpt.step_source),
        "metadata": ckpt.metadata,
        "skipped_globals": list(ckpt.skipped_globals),
        "notes": list(ckpt.notes),
        "model_source": model_source,
        "groups": [
            {"name": g.name, "stripped_prefix": g.stripped_prefix, "tensors": len(g.tensors)} for g in ckpt.groups
        ],
        "optimizers": [optimizer_summary(opt) for opt in ckpt.optimizers],
        "tensors": [tensor_row(info) for info in tensors],
        "totals": totals(tensors),
    }
    if report is not None:
        out["model_report"] = report.to_json()
    return out


def tensor_row(info: TensorInfo) -> dict[str, Any]:
    """One entry of ``tensors``."""
    return {
        "group": info.group,
        "name": info.name,
        "raw_name": info.raw_name,
        "kind": str(info.kind),
        "trainable": Trainable(info.trainable).to_json(),
        "source": str(info.source),
        "shape": list(info.shape),
        "dtype": info.dtype,
        "numel": info.numel,
        "nbytes": info.nbytes,
        "module": info.module,
        "tied_to": info.tied_to,
    }


def totals(tensors: list[TensorInfo]) -> dict[str, Any]:
    """Counts of tensors, and elements/bytes with each tied tensor counted once."""
    counted = [i for i in tensors if not i.tied_to]
    params = [i for i in counted if i.kind == TensorKind.PARAMETER]
    buffers = [i for i in counted if i.kind == TensorKind.BUFFER]
    by_dtype: Counter[str] = Counter()
    for info in counted:
        by_dtype[info.dtype] += info.nbytes

    def numel(infos, trainable=None):
        return sum(i.numel for i in infos if trainable is None or i.trainable == trainable)

    return {
        "tensors": len(tensors),
        "parameter_tensors": sum(i.kind == TensorKind.PARAMETER for i in tensors),
        "buffer_tensors": sum(i.kind == TensorKind.BUFFER for i in tensors),
        "parameters": numel(params),
        "trainable_parameters": numel(params, Trainable.TRUE),
        "frozen_parameters": numel(params, Trainable.FALSE),
        "unknown_parameters": numel(params, Trainable.UNKNOWN),
        "buffers": numel(buffers),
        "parameter_bytes": sum(i.nbytes for i in params),
        "buffer_bytes": sum(i.nbytes for i in buffers),
        "bytes": sum(i.nbytes for i in counted),
        "bytes_by_dtype": dict(sorted(by_dtype.items())),
        "tied_tensors": len(tensors) - len(counted),
    }


def optimizer_summary(opt: OptimizerState) -> dict[str, Any]:
    """One entry of ``optimizers``: where it sits, how many parameters and param groups, which states, bytes."""
    return {
        "key_path": opt.key_path,
        "params": len(opt.params),
        "param_groups": len(opt.hyperparams) or len({p.group_index for p in opt.params}),
        "states": opt.state_names,
        "state_bytes": opt.state_nbytes,
        "hyperparams": opt.hyperparams,
    }
