"""FLOPs of one training step: forward and backward counted by ``FlopCounterMode``, with the 6·N·D rule beside.

Counted: the forward in train mode on the given inputs, then ``backward()`` of the sum of its first floating-point
output (a stand-in loss: the loss itself is a few pointwise ops, which the counter counts as 0). The optimizer's
update (a few pointwise ops per parameter) is not counted. 6·N·D: N = parameters that require grad, embeddings
included (Chinchilla's convention; Kaplan et al. leave embeddings out), D = tokens per step (batch × length of each
token-id input); given only for token inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ckptboard.core.errors import FlopCountError
from ckptboard.core.flops import _EXTRA_FORMULAS, InputSpec, _unfused_kernels

__all__ = ["TrainingStepFlops", "count_training_step"]

_ASSUMPTIONS = (
    "forward + backward counted by torch FlopCounterMode on the inputs shown; a multiply-add counts 2 FLOP",
    "loss: the sum of the first floating-point output (the real loss adds only pointwise ops, counted 0)",
    "the optimizer update and any gradient clipping are not counted (pointwise: about 10-20 FLOP per parameter)",
    "6·N·D: N = parameters that require grad, embeddings included; D = tokens per step (batch x sequence length)",
)


@dataclass
class TrainingStepFlops:
    """One training step: counted forward and backward, and 6·N·D when the inputs are tokens."""

    forward_flops: int
    backward_flops: int
    trainable_parameters: int  # N
    tokens: int | None  # D, or None for inputs that are not token ids
    device: str
    assumptions: list[str] = field(default_factory=lambda: list(_ASSUMPTIONS))

    @property
    def total_flops(self) -> int:
        return self.forward_flops + self.backward_flops

    @property
    def six_n_d(self) -> int | None:
        return None if self.tokens is None else 6 * self.trainable_parameters * self.tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "forward_flops": self.forward_flops, "backward_flops": self.backward_flops,
            "total_flops": self.total_flops, "trainable_parameters": self.trainable_parameters,
            "tokens": self.tokens, "six_n_d": self.six_n_d, "device": self.device, "unit": "FLOP",
            "assumptions": list(self.assumptions),
        }


def count_training_step(
    model: nn.Module, inputs: Sequence[InputSpec], *, build_cpu_model: Callable[[], nn.Module] | None = None
) -> TrainingStepFlops:
    """Count forward + backward of ``model`` on ``inputs``: on meta when it runs there, else on CPU."""
    inputs = list(inputs)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    token_inputs = [s for s in inputs if not getattr(torch, s.dtype).is_floating_point]  # int64 ids
    tokens = sum(math.prod(s.shape) for s in token_inputs) or None
    try:
        fwd, bwd = _step(model, inputs, torch.device("meta"))
        device = "meta"
    except Exception as meta_error:  # arbitrary model code: any failure means "not on meta"
        cpu = model if not any(t.is_meta for t in chain(model.parameters(), model.buffers())) else None
        cpu = cpu or (build_cpu_model() if build_cpu_model is not None else None)
        if cpu is None:
            raise FlopCountError(
                f"the training step of {type(model).__name__} does not run on meta ({meta_error}) and there is no "
                "CPU model to run it on"
            ) from meta_error
        try:
            fwd, bwd = _step(cpu, inputs, torch.device("cpu"))
        except Exception as e:
            raise FlopCountError(
                f"the training step of {type(model).__name__} failed: {type(e).__name__}: {e} "
                "(check --input-shape/--input-dtype)"
            ) from e
        device = "cpu"
    return TrainingStepFlops(fwd, bwd, n, tokens, device)


def _step(model: nn.Module, inputs: Sequence[InputSpec], device: torch.device) -> tuple[int, int]:
    generator = torch.Generator().manual_seed(0)
    args = tuple(s.make(device, generator) for s in inputs if not s.name)
    kwargs = {s.name: s.make(device, generator) for s in inputs if s.name}
    if device.type == "meta" and not all(t.is_meta for t in chain(model.parameters(), model.buffers())):
        states = {n: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
                  for n, t in chain(model.named_parameters(), model.named_buffers())}
        call = lambda: torch.func.functional_call(model, states, args, kwargs)  # noqa: E731 - weights untouched
    else:
        call = lambda: model(*args, **kwargs)  # noqa: E731
    flags = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        with _unfused_kernels(), torch.enable_grad():
            forward = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
            with forward:
                loss = _first_float(call()).float().sum()
            backward = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
            with backward:
                loss.backward()
    finally:
        for m, training in flags:
            m.training = training
        for p in model.parameters():
            p.grad = None
    return forward.get_total_flops(), backward.get_total_flops()


def _first_float(output: Any) -> torch.Tensor:
    """The first floating-point tensor of a forward's output (a tensor, a tuple, a dict or a ModelOutput)."""
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        try:
            return _first_float(value)
        except FlopCountError:
            continue
    raise FlopCountError(f"the forward returned no floating-point tensor to take a loss of ({type(output).__name__})")
