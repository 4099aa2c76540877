"""Turn the raw bytes of one storage into the tensor a :class:`LazyTensor` describes (shared by zip and legacy)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from ckptboard.core.formats.safe_unpickle import LazyTensor

__all__ = ["build_tensor", "bytes_tensor"]


def bytes_tensor(buffer, offset: int, nbytes: int) -> torch.Tensor:
    """A uint8 CPU tensor viewing ``nbytes`` of ``buffer`` from ``offset`` (no copy)."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(buffer, dtype=torch.uint8, count=nbytes, offset=offset)


def build_tensor(raw: torch.Tensor, lazy: LazyTensor, resolve: Callable[[LazyTensor], torch.Tensor]) -> torch.Tensor:
    """The tensor over ``raw`` (a uint8 view of the whole storage); ``resolve`` reads per-channel qparams."""
    untyped = raw.untyped_storage()
    if lazy.quantizer is None:
        tensor = torch.empty(0, dtype=lazy.dtype).set_(untyped, lazy.offset, lazy.shape, lazy.stride)
        if lazy.flags:
            torch._utils.set_tensor_metadata(tensor, lazy.flags)
        return tensor
    params = tuple(resolve(p) if isinstance(p, LazyTensor) else p for p in lazy.quantizer)
    typed = torch.storage.TypedStorage(wrap_storage=untyped, dtype=lazy.dtype, _internal=True)
    return torch._utils._rebuild_qtensor(typed, lazy.offset, lazy.shape, lazy.stride, params, False, OrderedDict())
