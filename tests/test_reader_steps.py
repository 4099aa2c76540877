"""Step of a checkpoint: metadata keys in order of preference, then name patterns."""

from __future__ import annotations

import pytest

from ckptboard.core.records import StepSource
from ckptboard.core.steps import step_from_metadata, step_from_name


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"epoch": 3, "global_step": 120, "step": 7}, (120, StepSource.GLOBAL_STEP)),
        ({"epoch": 3, "step": 7, "iteration": 9}, (7, StepSource.STEP)),
        ({"epoch": 3, "iteration": 9}, (9, StepSource.ITERATION)),
        ({"epoch": 3.0}, (3, StepSource.EPOCH)),
        ({"global_step": True, "epoch": 2}, (2, StepSource.EPOCH)),  # a bool is no step
        ({"global_step": -1, "step": "40"}, (40, StepSource.STEP)),  # negative skipped; digit strings count
        ({"global_step": 1.5, "lr": 0.1}, (None, StepSource.NONE)),
        ({}, (None, StepSource.NONE)),
    ],
)
def test_step_from_metadata(metadata, expected):
    assert step_from_metadata(metadata) == expected


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("epoch=3-step=120.ckpt", 120),
        ("epoch=3-step=120-v1.ckpt", 120),
        ("checkpoint_000120.pt", 120),
        ("checkpoint-500", 500),
        ("model_ep05.pth", 5),
        ("global_step2000", 2000),
        ("iter_000300.pth.tar", 300),
        ("weights-12.safetensors", 12),
        ("step_0.pt", 0),
        ("resnet50.pt", None),
        ("last.ckpt", None),
        ("model.safetensors", None),
    ],
)
def test_step_from_name(name, step):
    assert step_from_name(name) == (step, StepSource.FILENAME if step is not None else StepSource.NONE)
