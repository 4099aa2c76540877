"""Synthetic transformer-like checkpoints for the statistics benchmark (GPT-style shapes, realistic values)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["transformer_state", "write_transformer"]


def transformer_state(target_bytes: int, dtype: torch.dtype = torch.float32, d: int = 1024, vocab: int = 32000,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """A GPT-like state_dict of about ``target_bytes``: embeddings, blocks of attention + MLP, LayerNorms."""
    g = torch.Generator().manual_seed(seed)
    size = torch.empty((), dtype=dtype).element_size()
    per_block = (12 * d * d + 13 * d) * size
    blocks = max(1, (target_bytes - (vocab + 1024) * d * size) // per_block)

    def weight(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(dtype)

    state = {"wte.weight": weight(vocab, d), "wpe.weight": weight(1024, d)}
    for b in range(blocks):
        p = f"h.{b}."
        state |= {
            p + "ln_1.weight": torch.ones(d, dtype=dtype), p + "ln_1.bias": torch.zeros(d, dtype=dtype),
            p + "attn.c_attn.weight": weight(3 * d, d), p + "attn.c_attn.bias": weight(3 * d),
            p + "attn.c_proj.weight": weight(d, d), p + "attn.c_proj.bias": weight(d),
            p + "ln_2.weight": 1 + weight(d), p + "ln_2.bias": weight(d),
            p + "mlp.c_fc.weight": weight(4 * d, d), p + "mlp.c_fc.bias": weight(4 * d),
            p + "mlp.c_proj.weight": weight(d, 4 * d), p + "mlp.c_proj.bias": weight(d),
        }
    state |= {"ln_f.weight": torch.ones(d, dtype=dtype), "ln_f.bias": torch.zeros(d, dtype=dtype)}
    return state


def write_transformer(path: Path, target_bytes: int, dtype: torch.dtype = torch.float32) -> int:
    """Write :func:`transformer_state` with ``torch.save``; returns the file size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(transformer_state(target_bytes, dtype), path)
    return path.stat().st_size
