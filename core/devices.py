"""Where tensors go: the one check of a user's ``--device`` (cpu or cuda[:N]), before any file is opened."""

from __future__ import annotations

import torch

from ckptboard.core.errors import UsageError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device`` from user input, checked: only cpu and cuda, and a CUDA device must exist here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"device {device!r} is not a torch device ({e}); use cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} is not available here: use --device cpu (CUDA is not available)")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} is not available here: use --device cpu "
                             f"(only {torch.cuda.device_count()} CUDA device(s))")
    elif dev.type != "cpu":
        raise UsageError(f"device {device!r} is not supported: only cpu and cuda devices are")
    return dev
