"""The public names of ``ckptboard.core``: pinned, each importable, and cheap to import (like httpx's
tests/test_exported_members.py)."""

import subprocess
import sys

import ckptboard.core as core

EXPECTED = {
    # errors
    "CkptboardError", "CheckpointError", "NotACheckpointError", "CorruptCheckpointError", "UnsafeCheckpointError",
    "IncompleteCheckpointError", "ChangedWhileReadError", "ResourceLimitError", "ModelSpecError", "CacheError",
    "FlopCountError", "UsageError",
    # records
    "CheckpointFormat", "TensorKind", "Trainable", "StepSource", "TensorInfo", "TensorGroup", "OptimizerParam",
    "OptimizerState",
    # verbs (imported on first use)
    "open_checkpoint", "Checkpoint", "classify", "discover", "plan", "execute", "summarize", "refresh", "Plan",
    "SummaryReport",
    "load_stats", "StatsTables", "TableName", "health_table", "compare_checkpoints", "frozen_tensors", "run_summary",
    "size_tree", "training_memory", "count_flops", "estimate_flops", "load_model",
    # what classify returns; a transformers model from its config.json; FLOPs of a training step
    "Classification", "Verdict", "build_from_config", "count_training_step",
    # any two checkpoints compared; spectral health of one weight; gradient statistics from optimizer state
    "diff_checkpoints", "spectral_stats", "gradient_rows",
}


def test_all_is_pinned_and_every_name_resolves_to_its_owner():
    assert set(core.__all__) == EXPECTED and len(core.__all__) == len(EXPECTED)
    for name in core.__all__:
        member = getattr(core, name)
        assert member.__name__ == name and member.__module__.startswith("ckptboard.core."), name
    assert set(dir(core)) >= EXPECTED


def test_verbs_stay_verbs_when_their_module_of_the_same_name_is_imported_first():
    # A fresh interpreter: importing a submodule sets the package attribute of its name, unless the package keeps it.
    code = ("import ckptboard.core.summarize, ckptboard.core.classify\n"
            "from ckptboard.core import classify, summarize\n"
            "from ckptboard.core.summarize import summarize as the_function\n"
            "assert summarize is the_function, summarize\n"
            "assert classify.__module__ == 'ckptboard.core.classify' and callable(classify), classify\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_importing_core_costs_no_torch_pandas_or_pyarrow():
    code = ("import sys, ckptboard.core\n"
            "heavy = sorted(m for m in ('torch', 'pandas', 'pyarrow', 'streamlit', 'plotly') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
