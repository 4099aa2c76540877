"""A FLOP ESTIMATE from weight shapes alone, for a checkpoint without its model. Never mixed with counted FLOPs.

A multiply-add is 2 FLOPs. Which layer a weight belongs to is decided by named rules, in this order:

- ``embedding-name``: a 2-D ``weight`` whose module's last name part is exactly one of ``EMBEDDING_MODULE_NAMES``
  (``wte``, ``embed_tokens``, …) is an embedding lookup: 0 FLOPs. With the model given, ``embedding-type`` decides
  instead: the module is an ``nn.Embedding``/``nn.EmbeddingBag``.
- ``linear-2d``: any other 2-D weight ``(out, in)`` is a matrix multiply: ``2·in·out`` FLOPs per token (per row of
  the input: a sample for an MLP, a position for a sequence).
- ``conv-nd``: a 3/4/5-D weight ``(C_out, C_in/groups, *kernel)`` is a Conv1d/2d/3d: ``2·(C_in/groups)·prod(kernel)
  ·C_out`` FLOPs per output position. The input size is not in a checkpoint, so no total over positions is given.
- ``rnn-2d``: ``weight_ih_l<k>``/``weight_hh_l<k>`` of RNN/LSTM/GRU, and ``in_proj_weight`` of MultiheadAttention,
  follow ``linear-2d`` (per token, per time step).

- ``tied-head``: an output head the file does not hold because it is tied to a saved weight (transformers and
  safetensors save tied weights once; the model report lists them as ``tied_keys``) is a ``linear-2d`` of the saved
  weight's shape. Without a model, a ``config.json`` that says ``"tie_word_embeddings": true`` gives each token
  embedding with no output head of its shape a tied head (``tied-head-config``); else nothing says a head is tied,
  and such an embedding is named in a caveat with the FLOPs a tied head would add.

Weights named otherwise (``*.bias``, 1-D norm scales, 0-D scalars) are skipped. Tied weights are NOT skipped: a tied
output head still multiplies. Biases, normalisation, activations and attention scores (they depend on the sequence
length) are not estimated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from ckptboard.core.records import StrEnum, TensorKind

__all__ = [
    "EMBEDDING_MODULE_NAMES",
    "LayerKind",
    "LayerEstimate",
    "FlopEstimate",
    "estimate_flops",
]

# Exact module names (last dotted part) that hold embedding tables in common model code.
EMBEDDING_MODULE_NAMES: frozenset[str] = frozenset({
    "embed", "embedding", "embeddings", "embed_tokens", "embed_positions", "word_embeddings",
    "position_embeddings", "token_type_embeddings", "tok_embeddings", "tok_emb", "pos_emb", "wte", "wpe",
    "token_embedding", "position_embedding", "shared",
})

# Of EMBEDDING_MODULE_NAMES, those that embed tokens (an output head may be tied to them), not positions.
_TOKEN_EMBEDDINGS = frozenset({"embed_tokens", "word_embeddings", "tok_embeddings", "tok_emb", "wte",
                               "token_embedding", "shared", "embed", "embedding", "embeddings"})

# Last module names of output heads in common model code (an untied head saved in the file).
_HEAD_NAMES = frozenset({"lm_head", "output", "head", "decoder", "proj_out", "embed_out", "output_projection"})

_RNN_WEIGHT = re.compile(r"weight_(ih|hh)_l\d+(_reverse)?")
_LINEAR_LIKE_NAMES = frozenset({"in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"})

_LABEL = "ESTIMATE from weight shapes alone (no model, no input): not a counted figure"
_CAVEATS = (
    "conv FLOPs depend on the input size, which a checkpoint does not record: they are per output position",
    "linear FLOPs are per token (a sample for an MLP, a position for a sequence model)",
    "biases, normalisation, activations and attention scores are not estimated",
    "a weight's layer is decided from its name and shape (rules in ckptboard.core.flop_estimate), not its module type",
)


class LayerKind(StrEnum):
    LINEAR = "linear"
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    CONV3D = "conv3d"
    EMBEDDING = "embedding"


@dataclass(frozen=True)
class LayerEstimate:
    """One weight's estimate: ``flops`` per ``per`` (a token, or an output position)."""

    weight: str
    module: str
    kind: str  # LayerKind value
    rule: str  # the rule that decided ``kind``
    shape: tuple[int, ...]
    flops: int
    per: str  # "token" | "output position" | "lookup"

    def to_json(self) -> dict[str, Any]:
        return {
            "weight": self.weight, "module": self.module, "kind": self.kind, "rule": self.rule,
            "shape": list(self.shape), "flops": self.flops, "per": self.per,
        }


@dataclass
class FlopEstimate:
    """The shape-based estimate of a checkpoint: per-weight figures and the per-token total of the linear layers."""

    layers: list[LayerEstimate] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # parameters with no rule (biases, norms)
    label: str = _LABEL
    caveats: list[str] = field(default_factory=lambda: list(_CAVEATS))

    @property
    def linear_flops_per_token(self) -> int:
        return sum(layer.flops for layer in self.layers if layer.kind == LayerKind.LINEAR)

    @property
    def conv_flops_per_output_position(self) -> dict[str, int]:
        """Per conv weight, since positions differ between layers and cannot be summed without the input."""
        return {layer.weight: layer.flops for layer in self.layers if layer.kind.startswith("conv")}

    def to_json(self) -> dict[str, Any]:
        """The ``estimate`` object of the CLI's JSON."""
        return {
            "label": self.label,
            "unit": "FLOP",
            "linear_flops_per_token": self.linear_flops_per_token,
            "layers": [layer.to_json() for layer in self.layers],
            "skipped": list(self.skipped),
            "caveats": list(self.caveats),
        }


def estimate_flops(
    records: Iterable[Any],
    model: nn.Module | None = None,
    tied: Iterable[tuple[str, str]] = (),
    tie_word_embeddings: bool = False,
) -> FlopEstimate:
    """Estimate FLOPs from TensorInfo-like records (``name``, ``shape``, ``kind``); ``model`` only names embeddings.

    ``tied``: ``(absent key, saved key)`` pairs of weights saved once (the model report's ``tied_keys``).
    ``tie_word_embeddings``: a config says the output head is tied to the token embedding (used without ``tied``).
    """
    embedding_modules = _embedding_modules(model) if model is not None else None
    out = FlopEstimate()
    shapes: dict[str, tuple[int, ...]] = {}
    for r in records:
        if str(getattr(r, "kind", TensorKind.PARAMETER)) != TensorKind.PARAMETER:
            continue
        shapes[str(r.name)] = tuple(int(d) for d in r.shape)
        layer = _layer(str(r.name), shapes[str(r.name)], embedding_modules)
        if layer is None:
            out.skipped.append(str(r.name))
        else:
            out.layers.append(layer)
    tied = [(head, saved) for head, saved in tied if saved in shapes and head not in shapes]
    for head, saved in tied:
        layer = _layer(head, shapes[saved], embedding_modules)
        if layer is not None and layer.kind == LayerKind.LINEAR:
            out.layers.append(replace(layer, rule="tied-head"))
    if not tied:
        headless = _headless_token_embeddings(out.layers)
        if tie_word_embeddings:
            out.layers += [
                replace(layer, weight=f"{layer.weight} (tied output head)", module="", kind=LayerKind.LINEAR.value,
                        rule="tied-head-config", flops=2 * math.prod(layer.shape), per="token")
                for layer in headless
            ]
        else:
            out.caveats += [
                f"{layer.weight} {tuple(layer.shape)} is a token embedding with no output layer of its shape in the "
                f"file: if the model ties its output head to it (tie_word_embeddings), add "
                f"{2 * math.prod(layer.shape):,} FLOP per token (give --model, or the config.json beside the weights, "
                "to count it)"
                for layer in headless
            ]
    return out


def _headless_token_embeddings(layers: list[LayerEstimate]) -> list[LayerEstimate]:
    """Token embeddings no output head of the file has the shape of: a tied head the file cannot show."""
    head_shapes = {
        layer.shape for layer in layers
        if layer.kind == LayerKind.LINEAR and layer.module.rpartition(".")[2] in _HEAD_NAMES
    }
    return [
        layer for layer in layers
        if layer.kind == LayerKind.EMBEDDING and layer.module.rpartition(".")[2] in _TOKEN_EMBEDDINGS
        and layer.shape not in head_shapes
    ]


def _layer(name: str, shape: tuple[int, ...], embedding_modules: set[str] | None) -> LayerEstimate | None:
    module, _, leaf = name.rpartition(".")
    ndim = len(shape)
    if leaf == "weight" and ndim == 2 and _is_embedding(module, embedding_modules):
        rule = "embedding-name" if embedding_modules is None else "embedding-type"
        return LayerEstimate(name, module, LayerKind.EMBEDDING.value, rule, shape, 0, "lookup")
    if leaf == "weight" and ndim == 2:
        return LayerEstimate(name, module, LayerKind.LINEAR.value, "linear-2d", shape, 2 * math.prod(shape), "token")
    if (_RNN_WEIGHT.fullmatch(leaf) or leaf in _LINEAR_LIKE_NAMES) and ndim == 2:
        return LayerEstimate(name, module, LayerKind.LINEAR.value, "rnn-2d", shape, 2 * math.prod(shape), "token")
    if leaf == "weight" and 3 <= ndim <= 5:
        # (C_out, C_in/groups, *kernel): 2·(C_in/groups)·prod(kernel)·C_out is twice the weight's element count.
        kind = LayerKind(f"conv{ndim - 2}d").value
        return LayerEstimate(name, module, kind, "conv-nd", shape, 2 * math.prod(shape), "output position")
    return None


def _is_embedding(module: str, embedding_modules: set[str] | None) -> bool:
    if embedding_modules is not None:
        return module in embedding_modules
    return module.rpartition(".")[2] in EMBEDDING_MODULE_NAMES


def _embedding_modules(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
