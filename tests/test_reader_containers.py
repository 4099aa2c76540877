"""What the reader finds inside a checkpoint: groups by content, optimizer state, metadata, names, ties."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from _fixtures_ckpt import TinyNet, lightning_dict, save, trained_net
from torch import nn

from ckptboard.core.errors import UnsafeCheckpointError
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import StepSource


def test_lightning_checkpoint_lists_without_trust(tmp_path):
    net, opt = trained_net()
    path = save(lightning_dict(net, opt), tmp_path / "epoch=3-step=120.ckpt")
    with open_checkpoint(path) as ckpt:
        assert [g.name for g in ckpt.groups] == ["state_dict"]
        assert [t.raw_name for t in ckpt.tensors] == list(net.state_dict())
        assert (ckpt.step, ckpt.step_source) == (120, StepSource.GLOBAL_STEP)
        assert "argparse.Namespace" in ckpt.skipped_globals
        assert any(g.endswith("TrainConfig") for g in ckpt.skipped_globals)
        meta = ckpt.metadata
        json.dumps(meta)  # JSON-safe
        assert meta["epoch"] == 3 and meta["pytorch-lightning_version"] == "2.4.0"
        assert meta["hyper_parameters"]["args"] == {"__skipped__": "argparse.Namespace", "state": {"lr": 0.01, "batch_size": 8}}
        assert meta["hyper_parameters"]["config"]["state"] == {"lr": 0.01, "layers": 3}
        # callbacks stay metadata even though best_k_models maps names to tensors; 0-d tensors show their value
        assert meta["callbacks"]["ModelCheckpoint{'monitor': 'val_loss'}"]["best_k_models"] == {"a.ckpt": 0.25}
        assert meta["lr_schedulers"][0]["step_size"] == 10
        assert "state_dict" not in meta and "optimizer_states" not in meta
        for info in ckpt.tensors:
            assert torch.equal(ckpt.load(info), net.state_dict()[info.raw_name])


def test_optimizer_state_in_param_groups_order(tmp_path):
    net, opt = trained_net()
    path = save(lightning_dict(net, opt), tmp_path / "last.ckpt")
    with open_checkpoint(path) as ckpt:
        (state,) = ckpt.optimizers
    assert state.key_path == "optimizer_states/0"
    params = list(net.parameters())  # embed.weight (= head.weight), conv.weight, conv.bias, bn.weight, bn.bias
    assert [p.param_id for p in state.params] == [0, 1, 2, 3, 4]
    assert [p.state_shapes["exp_avg"] for p in state.params] == [tuple(p.shape) for p in params]
    assert state.params[0].state_dtypes == {"step": "float32", "exp_avg": "float32", "exp_avg_sq": "float32"}
    assert state.state_names == ["exp_avg", "exp_avg_sq", "step"]
    assert state.hyperparams[0]["lr"] == 0.01 and state.hyperparams[0]["betas"] == [0.9, 0.999]
    numel = sum(p.numel() for p in params)  # 20 + 48 + 4 + 4 + 4 = 80
    assert numel == 80
    assert state.state_nbytes == 2 * 80 * 4 + 5 * 4  # exp_avg + exp_avg_sq in float32, 5 float32 steps


def test_tied_weights_found_once(tmp_path):
    net, _ = trained_net()
    path = save(net.state_dict(), tmp_path / "tied.pt")
    with open_checkpoint(path) as ckpt:
        by_name = {t.name: t for t in ckpt.tensors}
    assert by_name["head.weight"].tied_to == "embed.weight"
    assert by_name["embed.weight"].tied_to is None
    assert by_name["head.weight"].storage_key == by_name["embed.weight"].storage_key
    untied = sum(t.nbytes for t in by_name.values() if t.tied_to is None)
    assert untied == sum(t.nbytes for t in by_name.values()) - 5 * 4 * 4  # head.weight (5x4 float32) counted once


def test_ddp_and_compile_prefixes_are_stripped_for_display(tmp_path):
    net, _ = trained_net()
    raw = OrderedDict((f"module._orig_mod.{k}", v) for k, v in net.state_dict().items())
    path = save({"model": raw}, tmp_path / "ddp.pt")
    with open_checkpoint(path) as ckpt:
        (group,) = ckpt.groups
        assert group.name == "model" and group.stripped_prefix == "module._orig_mod."
        assert [t.name for t in group.tensors] == list(net.state_dict())
        assert [t.raw_name for t in group.tensors] == list(raw)
        assert group.tensors[0].module == "embed"


def test_prefix_kept_when_not_shared_by_the_whole_group(tmp_path):
    path = save({"module.a": torch.ones(1), "b": torch.ones(1)}, tmp_path / "mixed.pt")
    with open_checkpoint(path) as ckpt:
        assert [t.name for t in ckpt.tensors] == ["module.a", "b"]


def test_ema_and_model_groups_and_gan_pairs(tmp_path):
    net, _ = trained_net(0)
    ema, _ = trained_net(1)
    g, d = nn.Linear(2, 3), nn.Linear(3, 1)
    obj = {"model": net.state_dict(), "ema": {"shadow": ema.state_dict()}, "gan": {"generator": g.state_dict(), "discriminator": d.state_dict()}, "step": 9}
    path = save(obj, tmp_path / "multi.pt")
    with open_checkpoint(path) as ckpt:
        assert [grp.name for grp in ckpt.groups] == ["model", "ema/shadow", "gan/generator", "gan/discriminator"]
        assert (ckpt.step, ckpt.step_source) == (9, StepSource.STEP)
        assert ckpt.metadata == {"step": 9}
        ema_conv = next(t for t in ckpt.tensors if t.group == "ema/shadow" and t.name == "conv.weight")
        assert torch.equal(ckpt.load(ema_conv), ema.conv.weight)
        assert not any(t.tied_to and "/" in t.tied_to for t in ckpt.tensors)  # ties stay within each model


def test_bare_tensor_and_tensor_list(tmp_path):
    with open_checkpoint(save(torch.arange(3), tmp_path / "t.pt")) as ckpt:
        assert [(t.group, t.name) for t in ckpt.tensors] == [("", "tensor")]
    with open_checkpoint(save({"emb": [torch.ones(2), torch.zeros(2)]}, tmp_path / "l.pt")) as ckpt:
        assert [(t.group, t.name) for t in ckpt.tensors] == [("emb", "0"), ("emb", "1")]


def test_imagenet_style_dict_keeps_scalar_tensor_as_metadata(tmp_path):
    model = nn.Linear(2, 2)
    obj = {"epoch": 5, "arch": "resnet18", "state_dict": model.state_dict(), "best_acc1": torch.tensor(76.5), "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()}
    with open_checkpoint(save(obj, tmp_path / "checkpoint.pth.tar")) as ckpt:
        assert [g.name for g in ckpt.groups] == ["state_dict"]
        assert ckpt.metadata == {"epoch": 5, "arch": "resnet18", "best_acc1": 76.5}
        assert (ckpt.step, ckpt.step_source) == (5, StepSource.EPOCH)
        assert [p.state_shapes for p in ckpt.optimizers[0].params] == [{}, {}]  # no step taken yet


def test_metadata_only_file_has_no_groups(tmp_path):
    with open_checkpoint(save({"epoch": 1, "note": "x" * 600}, tmp_path / "meta.pt")) as ckpt:
        assert ckpt.groups == [] and "no model tensors found" in ckpt.notes
        assert len(ckpt.metadata["note"]) == 500  # strings are cut at 500 characters


def test_whole_module_inside_a_dict_is_a_group_only_with_trust(tmp_path):
    torch.manual_seed(0)
    net = TinyNet()
    path = save({"model": net, "epoch": 2}, tmp_path / "whole.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"whole\.pt: its tensors are held by .*TinyNet.*--trust"):
        open_checkpoint(path)
    with open_checkpoint(path, trust=True) as ckpt:
        assert [g.name for g in ckpt.groups] == ["model"]
        assert isinstance(ckpt.module, TinyNet)
        assert ckpt.metadata == {"epoch": 2}
