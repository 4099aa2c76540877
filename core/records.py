"""Records shared across core: what a checkpoint holds, before any tensor data is read.

A checkpoint is a set of *groups* (state_dicts found inside the file, named by their key path joined with
``/``; ``""`` for a bare state_dict), each a list of :class:`TensorInfo`. Optimizer state is kept apart in
:class:`OptimizerState` and never appears as model tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "StrEnum",
    "CheckpointFormat",
    "TensorKind",
    "Trainable",
    "StepSource",
    "TensorInfo",
    "TensorGroup",
    "OptimizerParam",
    "OptimizerState",
    "OptimizerKind",
]


class StrEnum(str, Enum):
    """``enum.StrEnum`` for Python 3.10: members compare and format as their values."""

    def __str__(self) -> str:  # pragma: no cover - trivial
        return str(self.value)


class CheckpointFormat(StrEnum):
    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy"
    SAFETENSORS = "safetensors"
    HF_SHARDED = "hf-sharded"
    HF_TRAINER = "hf-trainer"  # Trainer's checkpoint-N/: weights + optimizer.pt + trainer_state.json
    ACCELERATE = "accelerate"  # Accelerator.save_state folder
    PEFT = "peft"  # adapter_model.* + adapter_config.json
    DCP = "dcp"  # torch.distributed.checkpoint: .metadata + *.distcp
    DEEPSPEED = "deepspeed"  # engine.save_checkpoint: global_stepN/ with *_model_states.pt
    MEGATRON = "megatron"  # legacy iter_NNNNNNN/mp_rank_XX[_YYY]/model_optim_rng.pt
    PICKLED_MODULE = "pickled-module"
    TORCHSCRIPT = "torchscript"


class TensorKind(StrEnum):
    PARAMETER = "parameter"
    BUFFER = "buffer"


class Trainable(StrEnum):
    """Whether a parameter trains: three values, so it has no truth value (``bool()`` raises TypeError)."""

    TRUE = "true"
    FALSE = "false"
    UNKNOWN = "unknown"

    def to_json(self) -> bool | None:
        """JSON form: ``true``/``false``, ``null`` for unknown."""
        return {Trainable.TRUE: True, Trainable.FALSE: False}.get(self)

    def __bool__(self) -> bool:
        # A str subclass is truthy whatever its value: ``if info.trainable`` would keep frozen tensors and buffers.
        raise TypeError(
            f"Trainable.{self.name} has no truth value (it is true, false or unknown): compare with "
            "Trainable.TRUE, or use TensorInfo.is_trainable (True, False or None)"
        )


class StepSource(StrEnum):
    """Where a checkpoint's step came from, in order of preference."""

    GLOBAL_STEP = "metadata:global_step"
    STEP = "metadata:step"
    ITERATION = "metadata:iteration"
    ITER_NUM = "metadata:iter_num"  # nanoGPT
    EPOCH = "metadata:epoch"
    FILENAME = "filename"
    NONE = "none"


@dataclass
class TensorInfo:
    """One tensor of a checkpoint: everything known without reading its data."""

    group: str
    name: str  # display name: a shared ``module.``/``_orig_mod.`` prefix stripped
    raw_name: str  # the key as stored in the group
    shape: tuple[int, ...]
    dtype: str  # torch dtype without the ``torch.`` prefix, e.g. ``float32``
    numel: int
    nbytes: int
    storage_key: str = ""  # identity of the backing storage inside the file
    storage_offset: int = 0  # in elements, into that storage
    tied_to: str | None = None  # display name of the first tensor viewing the same data (counted once)
    kind: str = TensorKind.PARAMETER
    trainable: str = Trainable.UNKNOWN
    source: str = ""  # the classification rule that decided ``kind``/``trainable``

    @property
    def module(self) -> str:
        """The owning module's dotted path: the name up to its last dot."""
        return self.name.rpartition(".")[0]

    @property
    def is_trainable(self) -> bool | None:
        """``True``/``False``, ``None`` when unknown: safe in ``if`` (``trainable`` may be a plain str from a table)."""
        return Trainable(self.trainable).to_json()


@dataclass
class TensorGroup:
    """A state_dict found inside the checkpoint, named by its key path."""

    name: str
    tensors: list[TensorInfo] = field(default_factory=list)
    stripped_prefix: str = ""  # e.g. "module." when every key carried it


@dataclass
class OptimizerParam:
    """One parameter an optimizer holds: its position and the shapes of its state."""

    param_id: Any
    group_index: int
    state_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    state_dtypes: dict[str, str] = field(default_factory=dict)
    # The state's tensors as read (lazy records: no data) and its plain numbers (an old torch's int ``step``), for
    # ``Checkpoint.load_state``; not part of the record's identity.
    state_refs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    state_scalars: dict[str, float] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class OptimizerState:
    """An optimizer state_dict found in the checkpoint (``state`` + ``param_groups``)."""

    key_path: str
    params: list[OptimizerParam] = field(default_factory=list)  # in param_groups order
    hyperparams: list[dict[str, Any]] = field(default_factory=list)  # per param group, JSON-safe
    state_nbytes: int = 0
    by_name: bool = False  # ``param_id`` is the parameter's name (DCP's flattened keys), not its index

    @property
    def state_names(self) -> list[str]:
        names: set[str] = set()
        for p in self.params:
            names.update(p.state_shapes)
        return sorted(names)


class OptimizerKind(StrEnum):
    """Which optimizer state the training-memory estimate assumes (``size --optimizer``; here, not in core/size.py,
    so that the command line lists the choices without importing torch)."""

    ADAM = "adam"
    ADAMW = "adamw"
    SGD_MOMENTUM = "sgd-momentum"
    SGD = "sgd"
    CHECKPOINT = "checkpoint"  # the optimizer state the checkpoint holds, bytes as stored
