"""The training step of a checkpoint: from its metadata, else from its file or folder name.

Metadata keys, in order of preference: ``global_step``, ``step``, ``iteration``, ``iter_num`` (nanoGPT), ``epoch`` (a non-negative int,
a float with an integral value, or a string of digits; bools are not steps). Name patterns (case-insensitive, on the name without
checkpoint extensions), in order: ``step=120``/``step_120``/``global_step120``; ``iter_120``/``iteration-120``;
``checkpoint-500``/``checkpoint_000120``/``ckpt12``; ``epoch=3``/``ep05``; a number after a final ``-``, ``_`` or
``=``. A number that is a whole word such as ``resnet50`` is no step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ckptboard.core.records import StepSource

__all__ = ["step_from_metadata", "step_from_name", "strip_checkpoint_suffix"]

_METADATA_KEYS = (
    ("global_step", StepSource.GLOBAL_STEP),
    ("step", StepSource.STEP),
    ("iteration", StepSource.ITERATION),
    ("iter_num", StepSource.ITER_NUM),
    ("epoch", StepSource.EPOCH),
)
_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".tar", ".pkl", ".pickle", ".torch", ".model")
_NAME_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"(?<![a-z])(?:global_?)?step[=_\-]?0*(\d+)",
        r"(?<![a-z])iter(?:ation)?[=_\-]?0*(\d+)",
        r"(?<![a-z])(?:checkpoint|ckpt)[=_\-]?0*(\d+)",
        r"(?<![a-z])(?:epoch|ep)[=_\-]?0*(\d+)",
        r"[=_\-]0*(\d+)$",
    )
)


def step_from_metadata(metadata: Mapping[str, Any]) -> tuple[int | None, StepSource]:
    """``(step, source)`` from the first usable key of ``global_step``, ``step``, ``iteration``, ``iter_num``,
    ``epoch``."""
    for key, source in _METADATA_KEYS:
        value = metadata.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.isdecimal():  # safetensors metadata holds strings
            value = int(value)
        if isinstance(value, int) and value >= 0:
            return value, source
    return None, StepSource.NONE


def strip_checkpoint_suffix(name: str) -> str:
    """``epoch=3-step=120.ckpt`` -> ``epoch=3-step=120``; ``model.pth.tar`` -> ``model``."""
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name, changed = name[: -len(suffix)], True
    return name


def step_from_name(name: str) -> tuple[int | None, StepSource]:
    """``(step, StepSource.FILENAME)`` from a file or folder name, else ``(None, StepSource.NONE)``."""
    stem = strip_checkpoint_suffix(name)
    for pattern in _NAME_PATTERNS:
        match = pattern.search(stem)
        if match:
            return int(match.group(1)), StepSource.FILENAME
    return None, StepSource.NONE
