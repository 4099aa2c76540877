"""ckptboard.core: reading, classification, statistics, size/FLOP accounting and the stats cache.

Never imports streamlit or plotly.
"""

from ckptboard.core.errors import (
    CacheError,
    CheckpointError,
    CkptboardError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    ModelSpecError,
    NotACheckpointError,
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

__all__ = [
    "CacheError",
    "CheckpointError",
    "CheckpointFormat",
    "CkptboardError",
    "CorruptCheckpointError",
    "IncompleteCheckpointError",
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
]
