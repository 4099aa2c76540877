"""Checkpoint folders written by the real training libraries (Trainer, accelerate, peft, torch.distributed.checkpoint)
from tiny models built from configs: nothing is downloaded."""

from __future__ import annotations

import contextlib
import enum
from pathlib import Path

import torch
from torch import nn

__all__ = ["tiny_gpt2", "hf_trainer_run", "nanogpt_checkpoint", "TinyMlp"]


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


def _fsdp2_worker(rank: int, world: int, out: str, store: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # A file rendezvous: a free TCP port, once picked and released, can be taken before gloo binds it.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        model = dcp_model()
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        torch.manual_seed(1)
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=out)
    finally:
        dist.destroy_process_group()


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
    """Embedding tied to the head, a frozen Linear, a BatchNorm (buffers): every DeepSpeed verdict kind."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.frozen = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc = nn.Linear(5, 3)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight
        self.frozen.requires_grad_(False)


def deepspeed_checkpoint(save_dir: Path, tag: str, stage: int, world: int = 2, seed: int = 0) -> nn.Module:
    """A ``DeepSpeedEngine.save_checkpoint(save_dir, tag)`` folder as ``deepspeed/runtime/engine.py`` writes it
    (``_save_checkpoint``: ``_common_checkpoint_state``; ``_save_zero_checkpoint``; ``latest``), for ZeRO ``stage``
    2 or 3 over ``world`` data-parallel ranks, fp32 training with one param group; the model (its values are
    what the checkpoint holds). Partitioning follows ``zero_to_fp32.py``: ``ceil(numel / world)`` elements per
    rank, zero-padded, parameters one after another in each rank's flat group."""
    import math
    from collections import OrderedDict

    torch.manual_seed(seed)
    model = TiedMlp()
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
        mp_world_size=1, ds_config={"zero_optimization": {"stage": stage}}, ds_version="0.16.4",
    )
    folder = save_dir / tag
    folder.mkdir(parents=True)

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
                torch.save(state, folder / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
            flat = torch.cat([pieces(p, rank) for p in trainable])
        elif rank == 0:
            # ZeRO-2 (partition gradients): full module weights, frozen fragments are the whole frozen params
            module = model.state_dict()  # head.weight and emb.weight share one storage, saved once
            state = dict(module=module, **common,
                         frozen_param_fragments=OrderedDict((names[p], p.detach().clone()) for p in frozen))
            with _library_globals(**_DEEPSPEED_GLOBALS):
                torch.save(state, folder / "mp_rank_00_model_states.pt")
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
                       folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (save_dir / "latest").write_text(tag)
    (save_dir / "zero_to_fp32.py").write_text("# copied by DeepSpeed beside the tags\n")
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
