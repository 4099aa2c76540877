"""ckptboard.core: reading, classification, statistics, size/FLOP accounting and the stats cache.

The public verbs and records are re-exported here (``from ckptboard.core import refresh, load_stats``). Errors and
records are imported eagerly; the verbs are imported on first use, so that ``import ckptboard.core`` still costs no
torch, pandas or pyarrow. Never imports streamlit or plotly.
"""

import importlib
import sys
import types

from ckptboard.core.errors import (
    CacheError,
    ChangedWhileReadError,
    CheckpointError,
    CkptboardError,
    CorruptCheckpointError,
    FlopCountError,
    IncompleteCheckpointError,
    ModelSpecError,
    NotACheckpointError,
    ResourceLimitError,
    UnsafeCheckpointError,
    UsageError,
)
from ckptboard.core.records import (
    CheckpointFormat,
    OptimizerParam,
    OptimizerState,
    StepSource,
    TensorGroup,
    TensorInfo,
    TensorKind,
    Trainable,
)

# verb -> the module that owns it (imported on first use)
_LAZY: dict[str, str] = {
    "open_checkpoint": "reader",
    "Checkpoint": "reader",
    "classify": "classify",
    "Classification": "classify",
    "Verdict": "classify",
    "build_from_config": "hf_model",
    "discover": "discover",
    "plan": "summarize",
    "execute": "summarize",
    "summarize": "summarize",
    "refresh": "summarize",
    "Plan": "summarize",
    "SummaryReport": "summarize",
    "load_stats": "load",
    "StatsTables": "schema",
    "TableName": "schema",
    "health_table": "health",
    "compare_checkpoints": "health",
    "frozen_tensors": "health",
    "run_summary": "health",
    "size_tree": "size",
    "training_memory": "size",
    "count_flops": "flops",
    "count_training_step": "train_flops",
    "estimate_flops": "flop_estimate",
    "load_model": "model_spec",
    "diff_checkpoints": "diff",
    "spectral_stats": "spectral",
    "gradient_rows": "gradients",
}

__all__ = [
    "CacheError",
    "CheckpointError",
    "CheckpointFormat",
    "CkptboardError",
    "CorruptCheckpointError",
    "FlopCountError",
    "IncompleteCheckpointError",
    "ChangedWhileReadError",
    "ResourceLimitError",
    "ModelSpecError",
    "NotACheckpointError",
    "OptimizerParam",
    "OptimizerState",
    "StepSource",
    "TensorGroup",
    "TensorInfo",
    "TensorKind",
    "Trainable",
    "UnsafeCheckpointError",
    "UsageError",
    *_LAZY,
]


def __getattr__(name: str):
    owner = _LAZY.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{owner}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``summarize``/``classify`` the verbs: importing the submodule of the same name would otherwise set the
    package attribute to that module (use ``from ckptboard.core.summarize import ...`` for the module's names)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
