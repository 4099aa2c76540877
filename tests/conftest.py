"""Shared pytest setup. Area-specific fixtures live in their own test modules (or tests/_fixtures_*.py)."""

import torch

# This machine has 2 shared cores; one torch thread keeps tests steady and fast.
torch.set_num_threads(1)
