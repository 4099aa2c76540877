"""A zoo of real torch.nn modules with unusual parameters and buffers, their truth, and optimizers to train them.

Truth comes from the module itself: ``named_parameters()`` (trainable = ``requires_grad``) and ``named_buffers()``.
An optimizer is "trained" one step on random gradients of the parameters that require grad, so its state has the
shapes a real run leaves behind (parameters without a gradient get no state, as in a real run).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from ckptboard.core.records import OptimizerParam, OptimizerState, TensorGroup, TensorInfo

__all__ = [
    "ZOO",
    "OPTIMIZERS",
    "build",
    "truth",
    "group_from_module",
    "optimizer_record",
    "train_one_step",
]


class _GPT2StyleAttention(nn.Module):
    """GPT-2/BERT/LLaMA habits: a bool causal mask named ``bias``, position ids, rotary inv_freq."""

    def __init__(self, d: int = 8, n: int = 6):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.register_buffer("bias", torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n))
        self.register_buffer("position_ids", torch.arange(n).unsqueeze(0))
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d)))
        self.register_buffer("cos_cached", torch.zeros(n, d), persistent=False)


class _Frozen(nn.Module):
    """A frozen backbone (requires_grad False) under a trainable head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.head = nn.Linear(4, 2)
        self.backbone.requires_grad_(False)


class _WithNonPersistent(nn.Module):
    """A non-persistent buffer (absent by design), a persistent custom float buffer, a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("scratch", torch.zeros(4), persistent=False)
        self.register_buffer("class_weights", torch.ones(4))  # custom float buffer: no exact rule knows it
        self.lookup = torch.arange(4)  # plain attribute: never saved, does not follow .to(device)


class _Tied(nn.Module):
    """An embedding tied to the output projection, as language models do."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight


class _ConvBNReLU(nn.Module):
    """The classic QAT example: quant stub, conv, batch norm, relu, dequant stub."""

    def __init__(self):
        super().__init__()
        import torch.ao.quantization as tq

        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()


def _qat() -> nn.Module:
    import torch.ao.quantization as tq

    model = _ConvBNReLU().train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    model = tq.fuse_modules_qat(model, [["conv", "bn", "relu"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.prepare_qat(model)


def _spectral_old() -> nn.Module:
    return nn.Sequential(nn.utils.spectral_norm(nn.Linear(3, 4)), nn.utils.spectral_norm(nn.Conv2d(4, 4, 1)))


def _spectral_param() -> nn.Module:
    from torch.nn.utils.parametrizations import spectral_norm

    return nn.Sequential(spectral_norm(nn.Linear(3, 4)), spectral_norm(nn.Conv2d(4, 4, 1)))


def _weight_norm() -> nn.Module:
    from torch.nn.utils.parametrizations import weight_norm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated; its names still live on disk
        old = nn.utils.weight_norm(nn.Linear(4, 3))
    return nn.Sequential(weight_norm(nn.Linear(3, 4)), old)


def _transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


ZOO: dict[str, Callable[[], nn.Module]] = {
    "batchnorm1d": lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
    "batchnorm2d": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)),
    "batchnorm3d": lambda: nn.Sequential(nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3, affine=False), nn.Conv3d(3, 1, 1)),
    "syncbatchnorm": lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4), nn.Conv2d(4, 2, 1)),
    "instancenorm": lambda: nn.Sequential(
        nn.InstanceNorm1d(3, affine=True, track_running_stats=True),
        nn.InstanceNorm2d(3, track_running_stats=True),
        nn.InstanceNorm3d(3, affine=True, track_running_stats=True),
    ),
    "spectral_norm": _spectral_old,
    "spectral_norm_parametrization": _spectral_param,
    "weight_norm": _weight_norm,
    "qat_conv_bn_relu": _qat,
    "multihead_attention": lambda: nn.MultiheadAttention(8, 2, add_bias_kv=True),
    "lstm_gru": lambda: nn.ModuleDict({"lstm": nn.LSTM(4, 6, num_layers=2), "gru": nn.GRU(6, 3)}),
    "transformer_encoder": _transformer,
    "embedding": lambda: nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4)),
    "gpt2_style_buffers": _GPT2StyleAttention,
    "frozen_backbone": _Frozen,
    "non_persistent_and_custom_buffer": _WithNonPersistent,
    "tied_embedding": _Tied,
}


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _split_decay(model: nn.Module, **kw) -> torch.optim.Optimizer:
    """HF Trainer style: weight decay on >=2-D weights, none on biases and norm weights (two interleaved groups)."""
    params = _trainable(model)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": g, "weight_decay": wd} for g, wd in ((decay, 0.01), (no_decay, 0.0)) if g]
    return torch.optim.AdamW(groups, **kw)


# Each builds an optimizer for a model; ``None`` means a checkpoint without optimizer state.
OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer] | None] = {
    "none": None,
    "adam": lambda m: torch.optim.Adam(_trainable(m), lr=1e-3),
    "adamw_all_params": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),  # frozen ones held, without state
    "adamw_split_decay": lambda m: _split_decay(m, lr=1e-3),
    "sgd": lambda m: torch.optim.SGD(_trainable(m), lr=0.1),  # no momentum: empty state
    "sgd_momentum": lambda m: torch.optim.SGD(_trainable(m), lr=0.1, momentum=0.9),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The zoo member ``name``, built with a fixed seed."""
    torch.manual_seed(seed)
    return ZOO[name]()


def train_one_step(model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """One optimizer step on seeded random gradients of the parameters that require grad."""
    gen = torch.Generator().manual_seed(1)
    opt = make_optimizer(model)
    for p in _trainable(model):
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    opt.step()
    return opt


def truth(model: nn.Module) -> dict[str, tuple[str, str]]:
    """state_dict key -> (kind, trainable) from the module itself; buffers are never trainable."""
    out = {n: ("parameter", "true" if p.requires_grad else "false") for n, p in model.named_parameters(remove_duplicate=False)}
    out.update({n: ("buffer", "false") for n, _ in model.named_buffers(remove_duplicate=False)})
    return {k: out[k] for k in model.state_dict()}


def group_from_module(model: nn.Module, name: str = "", prefix: str = "") -> TensorGroup:
    """The records a reader lists for ``model.state_dict()`` saved under keys ``prefix + key``, ties included."""
    group = TensorGroup(name)
    first_by_ptr: dict[int, str] = {}
    for key, t in model.state_dict().items():
        ptr = t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
        group.tensors.append(
            TensorInfo(
                group=name,
                name=prefix + key,
                raw_name=prefix + key,
                shape=tuple(t.shape),
                dtype=str(t.dtype).removeprefix("torch."),
                numel=t.numel(),
                nbytes=t.numel() * t.element_size(),
                storage_key=str(ptr),
                tied_to=first_by_ptr.get(ptr) if t.numel() else None,
            )
        )
        first_by_ptr.setdefault(ptr, prefix + key)
    return group


def optimizer_record(state_dict: dict, key_path: str = "optimizer") -> OptimizerState:
    """The record a reader lists for ``optimizer.state_dict()``: params in param_groups order with state shapes."""
    record = OptimizerState(key_path)
    for gi, group in enumerate(state_dict["param_groups"]):
        record.hyperparams.append({k: v for k, v in group.items() if k != "params"})
        for pid in group["params"]:
            state = state_dict["state"].get(pid, {})
            tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            record.params.append(
                OptimizerParam(
                    pid,
                    gi,
                    {k: tuple(v.shape) for k, v in tensors.items()},
                    {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
                )
            )
            record.state_nbytes += sum(v.numel() * v.element_size() for v in tensors.values())
    return record
