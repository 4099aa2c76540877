"""Shared pytest setup. Area-specific fixtures live in their own test modules (or tests/_fixtures_*.py)."""

import sys

import pytest
import torch

# This machine has 2 shared cores; one torch thread keeps tests steady and fast.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest leaves its script installed as ``__main__``; a later spawned worker would re-run it."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main
