"""Fixtures for the size and FLOP tests: small real models and TensorInfo records built from them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ckptboard.core.records import TensorInfo, TensorKind, Trainable

__all__ = ["records_of", "TiedLM", "TinyGPT", "Attention", "NeedsItem", "NeedsNumpy"]


def records_of(model: nn.Module, *, known_trainable: bool = True, group: str = "") -> list[TensorInfo]:
    """TensorInfo records of ``model.state_dict()`` as the reader would write them: ties marked by shared storage."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    grads = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    first_by_storage: dict[tuple[int, int], str] = {}
    out = []
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        tied_to = first_by_storage.setdefault(key, name)
        kind = TensorKind.PARAMETER if name in params else TensorKind.BUFFER
        if kind == TensorKind.BUFFER:
            trainable = Trainable.FALSE
        elif not known_trainable:
            trainable = Trainable.UNKNOWN
        else:
            trainable = Trainable.TRUE if name in grads else Trainable.FALSE
        out.append(
            TensorInfo(
                group=group, name=name, raw_name=name, shape=tuple(t.shape), dtype=str(t.dtype).removeprefix("torch."),
                numel=t.numel(), nbytes=t.numel() * t.element_size(), tied_to=None if tied_to == name else tied_to,
                kind=kind.value, trainable=trainable.value,
            )
        )
    return out


class TiedLM(nn.Module):
    """Embedding 10×4 whose weight the output head shares, a frozen 4→4 linear and a BatchNorm1d(4)."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.wte.weight
        self.block[0].requires_grad_(False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.block(self.wte(ids)))


class Attention(nn.Module):
    """Bare scaled_dot_product_attention over three inputs."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A two-block causal transformer: token + position embeddings, tied output head."""

    def __init__(self, vocab: int = 32, d: int = 16, heads: int = 2, layers: int = 2, block_size: int = 8) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block_size, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class NeedsItem(nn.Module):
    """A forward that reads a value with ``.item()``: impossible on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().max().item() + 1.0
        return self.fc(x / scale)


class NeedsNumpy(nn.Module):
    """A forward that goes through numpy: impossible on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.from_numpy(x.numpy().copy()))
