"""Checkpoint folders written by the real training libraries (Trainer, accelerate, peft, torch.distributed.checkpoint)
from tiny models built from configs: nothing is downloaded."""

from __future__ import annotations

import contextlib
import enum
from pathlib import Path

import torch
from torch import nn

from _fixtures_procs import leave_rank

__all__ = ["tiny_gpt2", "hf_trainer_run", "nanogpt_checkpoint", "TinyMlp", "CodeRunningPayload"]


def tiny_gpt2(seed: int = 0):
    """A 2-layer GPT-2 (n_embd 32, vocab 64) with its position embedding frozen."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    model.transformer.wpe.weight.requires_grad_(False)
    return model


def hf_trainer_run(out: Path, max_steps: int = 4, save_steps: int = 2):
    """``Trainer.train()`` on random tokens, saving ``checkpoint-2/``, ``checkpoint-4/`` under ``out``; the model."""
    from transformers import Trainer, TrainingArguments

    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 64, (8,), generator=gen),
             "labels": torch.randint(0, 64, (8,), generator=gen)} for _ in range(8)]
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, save_steps=save_steps, per_device_train_batch_size=2,
        report_to=[], use_cpu=True, logging_steps=1, weight_decay=0.1, disable_tqdm=True, seed=0,
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    return model


class TinyMlp(nn.Module):
    """Embedding + two Linear + LayerNorm: weights (2-D) and vectors (1-D), as nanoGPT splits them."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(self.ln(self.fc1(self.emb(x))))


def nanogpt_checkpoint(path: Path) -> nn.Module:
    """nanoGPT's ``configure_optimizers`` (decay group: params with dim >= 2; no-decay: the rest) and its
    ``torch.save({'model', 'optimizer', 'iter_num', …})``, with ``emb`` frozen; the model."""
    torch.manual_seed(0)
    model = TinyMlp()
    model.emb.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter_num": 100, "best_val_loss": 1.5},
               path)
    return model


def dcp_model() -> nn.Sequential:
    """Linear(8, 6) + LayerNorm(6) with a frozen weight + Linear(6, 3), seeded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    model[1].weight.requires_grad_(False)
    return model


def _fsdp2_model(world: int) -> nn.Module:
    """:func:`dcp_model` under FSDP2 (``fully_shard`` per layer, then the whole) over ``world`` CPU ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    model = dcp_model()
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


class CodeRunningPayload:
    """Pickles as a call of ``os.system("touch MARKER")``: hostile input whose marker file must never appear."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _fsdp2_worker(rank: int, world: int, out: str, store: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    # A file rendezvous: a free TCP port, once picked and released, can be taken before gloo binds it.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = _fsdp2_model(world)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        torch.manual_seed(1)
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=out)
    finally:
        dist.destroy_process_group()
    leave_rank()


def fsdp2_save(out: Path, world: int = 2) -> None:
    """``dcp.save`` of an FSDP2 (``fully_shard``) model and its AdamW by ``world`` gloo ranks (file rendezvous): every
    parameter split into row chunks across the ranks' ``__R_0.distcp`` files."""
    import torch.multiprocessing as mp

    store = Path(out).parent / f".{Path(out).name}.rendezvous"
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        mp.spawn(_fsdp2_worker, args=(world, str(out), str(store)), nprocs=world)
    finally:
        store.unlink(missing_ok=True)


def dcp_single_save(out: Path, flat: bool = False, seed: int = 0, steps: int = 1) -> nn.Module:
    """Single-process ``dcp.save`` of :func:`dcp_model` after ``steps`` AdamW steps: ``{"model", "optim"}`` keys,
    or, when ``flat``, torchtitan's layout (``torchtitan/components/checkpoint.py`` and ``optimizer.py``): the model's
    keys at the top level beside ``optimizer.…`` from ``get_optimizer_state_dict(...,
    StateDictOptions(flatten_optimizer_state_dict=True))`` (``optimizer.state.<fqn>.exp_avg``,
    ``optimizer.param_groups.<fqn>.lr``); the model."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model = dcp_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(seed + 1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 8)).square().mean().backward()
        opt.step()
    msd, osd = get_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=flat))
    state = {**msd, "optimizer": osd} if flat else {"model": msd, "optim": osd}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(out))
    return model


def accelerate_run(project: Path, saves: int = 3) -> tuple[nn.Module, nn.Module]:
    """``Accelerator.save_state()`` with automatic naming after each of ``saves`` steps: two models (the first with
    a frozen ``0.weight``), AdamW and SGD-momentum, under ``project/checkpoints/checkpoint_N``; the two models."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    torch.manual_seed(0)
    acc = Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir=str(project),
                                                                    automatic_checkpoint_naming=True))
    first = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    first[0].weight.requires_grad_(False)
    second = nn.Linear(3, 2)
    opt1 = torch.optim.AdamW([p for p in first.parameters() if p.requires_grad])
    opt2 = torch.optim.SGD(second.parameters(), lr=0.1, momentum=0.9)
    first, second, opt1, opt2 = acc.prepare(first, second, opt1, opt2)
    for _ in range(saves):
        second(first(torch.randn(2, 4))).sum().backward()
        opt1.step()
        opt2.step()
        acc.save_state()
    return first, second


class Mlp(nn.Module):
    """Linear(4, 5) + tanh + Linear(5, 3): every parameter of its own shape, so an optimizer's entries are placed
    even over safetensors' name-sorted keys."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def accelerate_adam_run(project: Path, saves: int = 3, lr: float = 1e-2, betas=(0.9, 0.99)) -> nn.Module:
    """``Accelerator.save_state()`` (automatic naming) after each of ``saves`` Adam steps on :class:`Mlp`:
    ``project/checkpoints/checkpoint_N/{model.safetensors, optimizer.bin, random_states_0.pkl}``; the model."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    torch.manual_seed(0)
    acc = Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir=str(project),
                                                                    automatic_checkpoint_naming=True))
    model = Mlp()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    model, opt = acc.prepare(model, opt)
    gen = torch.Generator().manual_seed(1)
    for _ in range(saves):
        x = torch.randn(8, 4, generator=gen)
        opt.zero_grad()
        acc.backward((model(x) - x[:, :3]).square().mean())
        opt.step()
        acc.save_state()
    return model


def dcp_train_run(run: Path, saves=(1, 2, 3), flat: bool = False) -> nn.Module:
    """One AdamW training run of :func:`dcp_model` (single process), ``dcp.save`` into ``run/step-N`` after each
    step in ``saves``: ``{"model", "optim"}`` from ``get_state_dict``, or torchtitan's flattened keys when ``flat``
    (see :func:`dcp_single_save`); the model."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model = dcp_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(1)
    for step in range(1, max(saves) + 1):
        opt.zero_grad()
        model(torch.randn(4, 8, generator=gen)).square().mean().backward()
        opt.step()
        if step in saves:
            msd, osd = get_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=flat))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to save in a single process"
                dcp.save({**msd, "optimizer": osd} if flat else {"model": msd, "optim": osd},
                         checkpoint_id=str(run / f"step-{step}"))
    return model


def peft_adapter(out: Path, kind: str = "lora"):
    """``PeftModel.save_pretrained(out)`` of a LoRA (``c_attn``, r=2) or IA3 adapter on :func:`tiny_gpt2`, whose
    config names it ``local/tiny-gpt2``; the PEFT model."""
    from peft import IA3Config, LoraConfig, get_peft_model

    base = tiny_gpt2()
    base.name_or_path = "local/tiny-gpt2"  # what from_pretrained sets; PEFT writes it as base_model_name_or_path
    config = (LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True) if kind == "lora" else
              IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                        fan_in_fan_out=True))
    model = get_peft_model(base, config)
    model.save_pretrained(str(out), save_embedding_layers=False)  # no hub look-up of the base model
    return model


def lightning_run(root: Path) -> Path:
    """``lightning.Trainer.fit`` for 4 steps with ``ModelCheckpoint(every_n_train_steps=2, save_top_k=-1,
    save_last=True)`` and a ``CSVLogger``: ``version_0/checkpoints/{epoch=0-step=2,epoch=0-step=4,last}.ckpt`` beside
    ``version_0/metrics.csv``; the version folder."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

        def training_step(self, batch, _):
            loss = self.net(batch[0]).pow(2).mean()
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4)), batch_size=4)
    logger = CSVLogger(str(root), name="logs")
    trainer = L.Trainer(
        max_steps=4, logger=logger, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", callbacks=[ModelCheckpoint(every_n_train_steps=2, save_top_k=-1, save_last=True)],
    )
    trainer.fit(Module(), data)
    return Path(logger.log_dir)


# --- DeepSpeed and Megatron: these libraries do not run on this machine's CPU, so their folders are written here
# exactly as their save code writes them (module-level names below stand in for their pickled classes).


@contextlib.contextmanager
def _library_globals(**classes_by_module):
    """While writing: each ``{module: {name: class}}`` importable under that library's module path, so that pickle
    writes the library's own global names; removed again afterwards (nothing else may see a fake ``deepspeed``)."""
    import sys
    import types

    added = []
    for qualname, members in classes_by_module.items():
        parts = qualname.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for name, member in members.items():
            member.__module__, member.__qualname__ = qualname, name
            setattr(sys.modules[qualname], name, member)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


class ZeroStageEnum(int, enum.Enum):
    """``deepspeed.runtime.zero.config.ZeroStageEnum``, pickled under that name."""

    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3


class LossScaler:
    """``deepspeed.runtime.fp16.loss_scaler.LossScaler``, pickled under that name."""

    def __init__(self, scale=1.0):
        self.cur_scale = scale


_DEEPSPEED_GLOBALS = {"deepspeed.runtime.zero.config": {"ZeroStageEnum": ZeroStageEnum},
                      "deepspeed.runtime.fp16.loss_scaler": {"LossScaler": LossScaler}}


class TiedMlp(nn.Module):
    """Embedding tied to the head, a frozen Linear, a BatchNorm (buffers): every DeepSpeed verdict kind. A
    ``vocab`` of 683 or more makes the embedding larger than ``EXACT_PERCENTILE_NUMEL`` (6 x 683 = 4,098 > 4,096),
    and ``width`` the frozen Linear's input too (5 x width): statistics then take the per-chunk path."""

    def __init__(self, vocab: int = 10, width: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, 6)
        self.frozen = nn.Linear(width, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc = nn.Linear(5, 3)
        self.head = nn.Linear(6, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.frozen.requires_grad_(False)


def deepspeed_checkpoint(save_dir: Path, tag: str, stage: int, world: int = 2, seed: int = 0, mp: int = 1,
                         vocab: int = 10, width: int = 6):
    """A ``DeepSpeedEngine.save_checkpoint(save_dir, tag)`` folder as ``deepspeed/runtime/engine.py`` writes it
    (``_save_checkpoint``: ``_common_checkpoint_state``; ``_save_zero_checkpoint``; ``latest``), for ZeRO ``stage``
    2 or 3 over ``world`` data-parallel ranks, fp32 training with one param group; the model (its values are
    what the checkpoint holds). Partitioning follows ``zero_to_fp32.py``: ``ceil(numel / world)`` elements per
    rank, zero-padded, parameters one after another in each rank's flat group. With ``mp`` model-parallel ranks
    every rank writes its own files (``_get_rank_zero_ckpt_name``: ``zero_pp_rank_{dp}_mp_rank_{mp:02d}_…``,
    ``mp_world_size`` in the common state), its ZeRO partitions over the data-parallel ranks of its own slice; the
    slices here are whole models of seeds ``seed + m`` (the same names and shapes on every rank: the layout keys by
    file, not by shape), and the list of those models is returned. ``vocab``/``width`` size the model
    (:class:`TiedMlp`)."""
    folder = save_dir / tag
    folder.mkdir(parents=True)
    models = [_deepspeed_mp_rank(folder, tag, stage, world, seed + m, m, mp, vocab, width) for m in range(mp)]
    (save_dir / "latest").write_text(tag)
    (save_dir / "zero_to_fp32.py").write_text("# copied by DeepSpeed beside the tags\n")
    return models[0] if mp == 1 else models


def _deepspeed_mp_rank(folder: Path, tag: str, stage: int, world: int, seed: int, mp_rank: int, mp: int,
                       vocab: int = 10, width: int = 6):
    """The files of one model-parallel rank of :func:`deepspeed_checkpoint`; its model."""
    import math
    from collections import OrderedDict

    torch.manual_seed(seed)
    model = TiedMlp(vocab, width)
    names = {p: n for n, p in model.named_parameters()}  # engine.param_names: first name of a tied parameter
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    buffer_names = [n for n, _ in model.named_buffers()]
    shared = {"head.weight": "emb.weight"}  # _get_shared_params: the name not stored -> the one holding data
    common = dict(
        buffer_names=buffer_names, optimizer=None,
        param_shapes=[OrderedDict((names[p], p.shape) for p in trainable)],
        frozen_param_shapes=OrderedDict((names[p], p.shape) for p in frozen),
        shared_params=shared, lr_scheduler=None, data_sampler=None, random_ltd=None, sparse_tensor_module_names=set(),
        skipped_steps=0, global_steps=int(tag.removeprefix("global_step")), global_samples=64, dp_world_size=world,
        mp_world_size=mp, ds_config={"zero_optimization": {"stage": stage}}, ds_version="0.16.4",
    )
    def pieces(p, rank):
        per = math.ceil(p.numel() / world)
        flat = torch.cat([p.detach().reshape(-1), torch.zeros(per * world - p.numel())])
        return flat[rank * per : (rank + 1) * per].clone()

    for rank in range(world):
        if stage == 3:
            # ZeRO-3 module_state_dict: partitioned parameters are empty placeholders, buffers are real
            module = OrderedDict((n, t.detach().clone() if n in buffer_names else torch.empty(0))
                                 for n, t in model.state_dict().items())
            state = dict(module=module, **common,
                         frozen_param_fragments=OrderedDict((names[p], pieces(p, rank)) for p in frozen))
            with _library_globals(**_DEEPSPEED_GLOBALS):
                torch.save(state, folder / f"zero_pp_rank_{rank}_mp_rank_{mp_rank:02d}_model_states.pt")
            flat = torch.cat([pieces(p, rank) for p in trainable])
        elif rank == 0:
            # ZeRO-2 (partition gradients): full module weights, frozen fragments are the whole frozen params
            module = model.state_dict()  # head.weight and emb.weight share one storage, saved once
            state = dict(module=module, **common,
                         frozen_param_fragments=OrderedDict((names[p], p.detach().clone()) for p in frozen))
            with _library_globals(**_DEEPSPEED_GLOBALS):
                torch.save(state, folder / f"mp_rank_{mp_rank:02d}_model_states.pt")
        if stage == 2:
            numel = sum(p.numel() for p in trainable)
            per = math.ceil(numel / world)
            whole = torch.cat([p.detach().reshape(-1) for p in trainable] + [torch.zeros(per * world - numel)])
            flat = whole[rank * per : (rank + 1) * per].clone()
        inner = {"state": {0: {"step": torch.tensor(4.0), "exp_avg": torch.zeros_like(flat),
                               "exp_avg_sq": torch.zeros_like(flat)}},
                 "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": [0]}]}
        zero_state = {
            "zero_stage": ZeroStageEnum(stage), "loss_scaler": LossScaler(), "dynamic_loss_scale": False,
            "overflow": False, "partition_count": world, "optimizer_state_dict": inner,
            ("fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"): [flat],
        }
        with _library_globals(**_DEEPSPEED_GLOBALS):
            torch.save({"optimizer_state_dict": zero_state, "ds_config": common["ds_config"], "ds_version": "0.16.4"},
                       folder / f"zero_pp_rank_{rank}_mp_rank_{mp_rank:02d}_optim_states.pt")
    return model


def megatron_checkpoint(save_dir: Path, iteration: int, tp: int = 2, seed: int = 0) -> list[dict]:
    """``megatron/training/checkpointing.py`` ``save_checkpoint`` with ``--ckpt-format torch`` and tensor
    parallelism ``tp`` (pipeline 1): ``iter_{iteration:07d}/mp_rank_{r:02d}/model_optim_rng.pt`` holding
    ``generate_state_dict``'s keys, and ``latest_checkpointed_iteration.txt``; each rank's model state_dict."""
    import argparse

    torch.manual_seed(seed)
    hidden, ffn = 8, 16
    sds = []
    for rank in range(tp):
        # a legacy GPT: column-parallel QKV/fc1 split on dim 0, row-parallel proj/fc2 on dim 1, LayerNorms whole
        sd = {
            "embedding.word_embeddings.weight": torch.randn(32 // tp, hidden),
            "encoder.layers.0.input_layernorm.weight": torch.ones(hidden),
            "encoder.layers.0.input_layernorm.bias": torch.zeros(hidden),
            "encoder.layers.0.self_attention.query_key_value.weight": torch.randn(3 * hidden // tp, hidden),
            "encoder.layers.0.self_attention.dense.weight": torch.randn(hidden, hidden // tp),
            "encoder.layers.0.mlp.dense_h_to_4h.weight": torch.randn(ffn // tp, hidden),
            "encoder.layers.0.mlp.dense_4h_to_h.weight": torch.randn(hidden, ffn // tp),
        }
        params = list(sd.values())
        inner = {"state": {i: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                           for i, p in enumerate(params)},
                 "param_groups": [{"lr": 1e-4, "weight_decay": 0.01, "params": list(range(len(params)))}]}
        state = {
            "args": argparse.Namespace(tensor_model_parallel_size=tp, iteration=iteration),
            "checkpoint_version": 3.0,
            "iteration": iteration,
            "model": sd,
            "optimizer": {"optimizer": inner, "grad_scaler": None,
                          "fp32_from_fp16_params": [[p.float().clone() for p in params]]},
            "opt_param_scheduler": {"max_lr": 1e-4, "num_steps": iteration},
            "rng_state": [{"random_rng_state": (3, (1, 2), None), "np_rng_state": ("MT19937", [1, 2], 0, 0, 0.0),
                           "torch_rng_state": torch.zeros(16, dtype=torch.uint8), "cuda_rng_state": None,
                           "rng_tracker_states": {}}],
            "num_floating_point_operations_so_far": 0,
        }
        folder = save_dir / f"iter_{iteration:07d}" / f"mp_rank_{rank:02d}"
        folder.mkdir(parents=True)
        torch.save(state, folder / "model_optim_rng.pt")
        sds.append(sd)
    (save_dir / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return sds


def deepspeed_pickling():
    """A context in which DeepSpeed's pickled classes (stand-ins above) load and save under their own names."""
    return _library_globals(**_DEEPSPEED_GLOBALS)


# --- Megatron-Core dist_checkpointing, torch_dist backend --------------------------------------------------------

_MCORE_TORCH = "megatron.core.dist_checkpointing.strategies.torch"


def _mcore_metadata_class():
    """``MCoreMetadata`` of Megatron-Core 0.15 (``strategies/torch.py``): DCP's ``Metadata`` plus ``mcore_data``;
    pickled as the root of ``.metadata`` under Megatron's name."""
    import dataclasses

    from torch.distributed.checkpoint.metadata import Metadata

    @dataclasses.dataclass
    class MCoreMetadata(Metadata):
        mcore_data: dict | None = None

    return MCoreMetadata


def megatron_gpt_weights(layers: int = 2, hidden: int = 8, ffn: int = 16, vocab: int = 32, seed: int = 0) -> dict:
    """A Megatron-Core GPT with TransformerEngine layers (``gpt_layer_specs.py``, TE spec), as its
    ``sharded_state_dict`` keys it: ``key -> (global tensor, tensor-parallel axis or None, stacked over layers)``."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    stacked = {  # one tensor per parameter for all layers: TransformerBlock.sharded_state_dict's (0, layer, layers)
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight": (1 + 0.1 * rand(layers, hidden), None),
        "decoder.layers.self_attention.linear_qkv.weight": (rand(layers, 3 * hidden, hidden), 1),  # column parallel
        "decoder.layers.self_attention.linear_qkv.bias": (rand(layers, 3 * hidden), 1),
        "decoder.layers.self_attention.linear_proj.weight": (rand(layers, hidden, hidden), 2),  # row parallel
        "decoder.layers.self_attention.linear_proj.bias": (rand(layers, hidden), None),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": (1 + 0.1 * rand(layers, hidden), None),
        "decoder.layers.mlp.linear_fc1.weight": (rand(layers, ffn, hidden), 1),
        "decoder.layers.mlp.linear_fc2.weight": (rand(layers, hidden, ffn), 2),
    }
    whole = {
        "embedding.word_embeddings.weight": (rand(vocab, hidden), 0),  # vocab parallel
        "decoder.final_layernorm.weight": (1 + 0.1 * rand(hidden), None),
        "output_layer.weight": (rand(vocab, hidden), 0),
    }
    return {**{k: (t, a, True) for k, (t, a) in stacked.items()}, **{k: (t, a, False) for k, (t, a) in whole.items()}}


def _megatron_shards(tensor: torch.Tensor, tp_axis, stacked: bool, rank: int, world: int):
    """This tensor-parallel rank's pieces ``(offsets, piece)``: one per layer when stacked, a replicated tensor on
    rank 0 only (``keep_only_main_replica``: the other replicas are not saved)."""
    if tp_axis is None and rank != 0:
        return []
    pieces = []
    for layer in range(tensor.shape[0]) if stacked else [None]:
        piece = tensor[layer : layer + 1] if stacked else tensor
        offsets = [layer if stacked else 0] + [0] * (piece.dim() - 1) if stacked else [0] * piece.dim()
        if tp_axis is not None:
            size = piece.shape[tp_axis] // world
            piece = piece.narrow(tp_axis, rank * size, size)
            offsets[tp_axis] = rank * size
        pieces.append((offsets, piece.contiguous().clone()))
    return pieces


def _megatron_sharded_tensor(tensor, tp_axis, stacked, rank, world):
    """``strategies/torch.py`` ``sharded_tensor_to_torch_sharded_tensor``: a torch ShardedTensor from the local
    shards and the global chunk grid, built without communication."""
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
    from torch.distributed._shard.sharded_tensor.metadata import ShardedTensorMetadata, TensorProperties

    local = [Shard.from_tensor_and_offsets(piece, offsets, rank)
             for offsets, piece in _megatron_shards(tensor, tp_axis, stacked, rank, world)]
    if not local:
        return None
    everyone = []
    for r in range(world):
        for offsets, piece in _megatron_shards(tensor, tp_axis, stacked, r, world):
            everyone.append(ShardMetadata(offsets, list(piece.shape), f"rank:{r}/cpu"))
    meta = ShardedTensorMetadata(everyone, tensor.shape, TensorProperties(dtype=tensor.dtype))
    return ShardedTensor._init_from_local_shards_and_global_metadata(local, meta, process_group=None)


def _sharded_object(data) -> "io.BytesIO":
    """``strategies/torch.py`` ``_mcore_to_torch_sharded_object``: the objects of one key, ``torch.save``d as a list."""
    import io

    buffer = io.BytesIO()
    torch.save([data], buffer)
    return buffer


def _te_extra_state(layer: int) -> "io.BytesIO":
    """TransformerEngine's ``get_extra_state`` (``transformer_engine/pytorch/module/base.py``, TE 1.x): the FP8
    metadata ``torch.save``d into an ``io.BytesIO``."""
    import io

    state = io.BytesIO()
    torch.save({"scale_fwd": torch.ones(3) * (layer + 1), "amax_history_fwd": torch.zeros(4, 3),
                "extra_fp8_variables": {"num_gemms": 1}}, state)
    return state


def _megatron_common(iteration: int, tp: int) -> dict:
    """The non-sharded part of ``megatron/training/checkpointing.py`` ``generate_state_dict`` (distributed
    optimizer, ``fully_reshardable``): what ``common.pt`` holds."""
    import argparse

    return {
        "args": argparse.Namespace(tensor_model_parallel_size=tp, ckpt_format="torch_dist", iteration=iteration),
        "checkpoint_version": 3.0,
        "iteration": iteration,
        "optimizer": {"optimizer": {"param_groups": [
            {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "step": iteration,
             "wd_mult": 1.0, "lr_mult": 1.0, "is_expert_parallel": False, "is_decoupled_lr": False}]},
            "param_state_sharding_type": "fully_reshardable"},
        "opt_param_scheduler": {"max_lr": 3e-4, "num_steps": iteration},
        "num_floating_point_operations_so_far": 1.5e12,
    }


def _megatron_dist_worker(rank, world, save_dir, store, iterations, layers, seed, common_in_dcp):
    import torch.distributed as dist
    from torch.distributed.checkpoint import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import SavePlan
    from torch.distributed.checkpoint.planner_helpers import _create_write_items

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mcore_metadata = _mcore_metadata_class()

    class MCoreSavePlanner(DefaultSavePlanner):
        """``strategies/torch.py`` ``MCoreSavePlanner``: BytesIO values written on every rank, as they are."""

        def create_local_plan(self) -> SavePlan:
            items = [item for fqn, obj in self.state_dict.items() for item in _create_write_items(fqn, obj)]
            self.plan = SavePlan(items=items, planner_data=getattr(self, "mappings", None))
            return self.plan

        def create_global_plan(self, all_plans):
            plans, metadata = super().create_global_plan(all_plans)
            if common_in_dcp:  # Megatron-Core after July 2026: a plain DCP Metadata
                return plans, metadata
            return plans, mcore_metadata(mcore_data={}, **vars(metadata))  # Megatron-Core 0.15

        def transform_object(self, write_item, object):
            return object

    try:
        for iteration in iterations:
            _megatron_dist_save(rank, world, f"{save_dir}/iter_{iteration:07d}", iteration, layers, seed + iteration,
                                common_in_dcp, MCoreSavePlanner, mcore_metadata)
    finally:
        dist.destroy_process_group()
    leave_rank()


def _megatron_dist_save(rank, world, out, iteration, layers, seed, common_in_dcp, planner, mcore_metadata):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    state = {}
    weights = megatron_gpt_weights(layers=layers, seed=seed)
    for key, (tensor, axis, stacked) in weights.items():
        for prefix in ("", "optimizer.state.param.", "optimizer.state.exp_avg.", "optimizer.state.exp_avg_sq."):
            value = tensor if not prefix or prefix.endswith("param.") else (
                tensor.abs() * 1e-3 if "sq" in prefix else tensor * 1e-2)
            sharded = _megatron_sharded_tensor(value, axis, stacked, rank, world)
            if sharded is not None:
                state[prefix + key] = sharded
    if rank == 0:  # TE extra state: replica (0, tp_rank, dp_rank), saved by tensor-parallel rank 0 only
        for module in ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1",
                       "mlp.linear_fc2"):
            for layer in range(layers):
                key = f"decoder.layers.{module}._extra_state/shard_{layer}_{layers}"
                state[key] = _sharded_object(_te_extra_state(layer))
    rng = {"random_rng_state": (3, tuple(range(4)), None), "torch_rng_state": torch.zeros(8, dtype=torch.uint8),
           "cuda_rng_state": None, "rng_tracker_states": {}}
    state[f"rng_state/shard_0.{rank}_1.{world}"] = _sharded_object([rng])  # (pp, tp) grid, per rank
    if common_in_dcp and rank == 0:
        state["common_state"] = _sharded_object(_megatron_common(iteration, world))
    with _library_globals(**{_MCORE_TORCH: {"MCoreMetadata": mcore_metadata}}):
        dcp.save(state, checkpoint_id=out, planner=planner(flatten_state_dict=False, flatten_sharded_tensors=False))
    dist.barrier()
    if rank == 0:
        if not common_in_dcp:
            torch.save(_megatron_common(iteration, world), Path(out) / "common.pt")  # strategies/common.py
        (Path(out) / "metadata.json").write_text('{"sharded_backend": "torch_dist", "sharded_backend_version": 1}')
    dist.barrier()


def megatron_dist_checkpoint(save_dir: Path, iterations=(100,), tp: int = 2, layers: int = 2, seed: int = 0,
                             common_in_dcp: bool = False) -> dict[int, dict]:
    """``megatron/training/checkpointing.py`` ``save_checkpoint`` with ``--ckpt-format torch_dist`` (Megatron-Core
    ``dist_checkpointing/serialization.py`` ``save`` + ``strategies/torch.py`` ``TorchDistSaveShardedStrategy``) at
    each of ``iterations``, tensor parallelism ``tp`` over gloo ranks, the distributed optimizer in
    ``fully_reshardable`` form: ``iter_{iteration:07d}/{.metadata, __R_0.distcp, common.pt, metadata.json}`` and
    ``latest_checkpointed_iteration.txt``. Torch's ShardedTensor carries each rank's chunks (as Megatron does for
    layer-stacked tensors), ShardedObjects (TE ``_extra_state``, ``rng_state``) are ``torch.save``d lists, and
    ``.metadata``'s root is Megatron-Core 0.15's ``MCoreMetadata``; with ``common_in_dcp``, the layout after
    Megatron-Core deprecated ``common.pt`` (July 2026): ``common_state`` inside the DCP, a plain ``Metadata``.
    Returns each iteration's weights as :func:`megatron_gpt_weights` gives them."""
    import torch.multiprocessing as mp

    save_dir.mkdir(parents=True, exist_ok=True)
    store = save_dir / ".rendezvous"
    try:
        mp.spawn(_megatron_dist_worker, args=(tp, str(save_dir), str(store), tuple(iterations), layers, seed,
                                              common_in_dcp), nprocs=tp)
    finally:
        store.unlink(missing_ok=True)
    (save_dir / "latest_checkpointed_iteration.txt").write_text(str(max(iterations)))
    return {i: megatron_gpt_weights(layers=layers, seed=seed + i) for i in iterations}


def _accelerate_fsdp_worker(rank: int, world: int, project: str, store: str, saves: int) -> None:
    import torch.distributed as dist
    from accelerate import PartialState
    from accelerate.checkpointing import save_accelerator_state
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import save_fsdp_model, save_fsdp_optimizer

    import os

    # accelerate's own process state (its logging needs one) sets up the gloo group, from a file rendezvous
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    accelerator = PartialState(cpu=True, init_method=f"file://{store}")
    try:
        model = _fsdp2_model(world)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.99))
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
        gen = torch.Generator().manual_seed(1)
        for index in range(saves):
            opt.zero_grad()
            model(torch.randn(4, 8, generator=gen)).square().mean().backward()
            opt.step()
            out = f"{project}/checkpoints/checkpoint_{index}"
            # Accelerator.save_state's FSDP branch (accelerate/accelerator.py), in its order
            save_fsdp_model(plugin, accelerator, model, out, 0)
            save_fsdp_optimizer(plugin, accelerator, opt, model, out, 0)
            save_accelerator_state(out, [], [], [], [], rank, index + 1)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    leave_rank()


def accelerate_fsdp_run(project: Path, saves: int = 2, world: int = 2) -> None:
    """``Accelerator.save_state()`` under FSDP2 with ``SHARDED_STATE_DICT`` after each of ``saves`` AdamW steps on
    :func:`dcp_model`, ``world`` gloo ranks: ``checkpoints/checkpoint_N/{pytorch_model_fsdp_0/, optimizer_0/,
    random_states_R.pkl}`` (two DCP folders, written by accelerate's ``save_fsdp_model`` / ``save_fsdp_optimizer``
    in ``utils/fsdp_utils.py``). The Accelerator refuses FSDP on CPU, so the fixture calls the functions its
    ``save_state`` calls, in its order, on a real ``fully_shard`` model."""
    import torch.multiprocessing as mp

    project = Path(project).resolve()  # a file:// rendezvous URL needs an absolute path
    store = project.parent / f".{project.name}.rendezvous"
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        mp.spawn(_accelerate_fsdp_worker, args=(world, str(project), str(store), saves), nprocs=world)
    finally:
        store.unlink(missing_ok=True)
