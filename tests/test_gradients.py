"""Gradient statistics from saved optimizer state, checked against the gradients and updates of a real training run."""

import math

import pytest
import torch
from torch import nn

from ckptboard.core.classify import classify
from ckptboard.core.gradients import MomentKind, adam_stats, gradient_rows, held_tensors
from ckptboard.core.reader import open_checkpoint

BETAS = (0.9, 0.99)
LR = 1e-2


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _train(tmp_path, optimizer: str, steps: int = 30, save_at=(10, 30)):
    """Train ``_Net`` with Adam or SGD-momentum, record each step's gradients and weights, save Lightning-style dicts
    (``state_dict`` under ``model.`` + ``optimizer_states`` + ``global_step``) at ``save_at``."""
    torch.manual_seed(0)
    net = _Net()
    if optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=LR, betas=BETAS)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    grads, weights = [], [{k: v.clone() for k, v in net.named_parameters()}]
    for step in range(1, steps + 1):
        x = torch.randn(16, 6, generator=g)
        loss = (net(x) - x[:, :2]).square().mean()
        opt.zero_grad()
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
        opt.step()
        weights.append({k: v.detach().clone() for k, v in net.named_parameters()})
        if step in save_at:
            torch.save({"global_step": step, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
                        "optimizer_states": [opt.state_dict()]}, tmp_path / f"step={step}.ckpt")
    return grads, weights


def _rows(path):
    with open_checkpoint(path) as ckpt:
        classify(ckpt)
        rows, notes = gradient_rows(ckpt)
    return {r["name"]: r for r in rows}, notes


def test_adam_state_gives_the_ema_of_the_true_gradients_and_the_step_taken(tmp_path):
    grads, weights = _train(tmp_path, "adam")
    rows, notes = _rows(tmp_path / "step=30.ckpt")
    assert not notes and sorted(rows) == ["model.fc1.bias", "model.fc1.weight", "model.fc2.bias", "model.fc2.weight"]
    b1, b2 = BETAS
    for name, row in rows.items():
        key = name.removeprefix("model.")
        v = torch.zeros_like(grads[0][key], dtype=torch.float64)
        for g in grads:  # Adam's second moment, recomputed from the recorded gradients
            v = b2 * v + (1 - b2) * g[key].double().square()
        v_hat = v / (1 - b2 ** 30)
        assert row["moments"] == MomentKind.ADAM and row["opt_step"] == 30
        assert row["grad_rms"] == pytest.approx(math.sqrt(v_hat.mean().item()), rel=1e-5)
        assert row["grad_rms_max"] == pytest.approx(v_hat.sqrt().max().item(), rel=1e-5)
        # The saved state produced the last step: W_30 - W_29 = -lr m̂ / (√v̂ + eps) (no weight decay).
        taken = (weights[30][key] - weights[29][key]).double()
        assert row["update_norm"] == pytest.approx(torch.linalg.norm(taken).item(), rel=1e-4)
        assert row["weight_norm"] == pytest.approx(torch.linalg.norm(weights[30][key].double()).item(), rel=1e-6)
        assert row["update_ratio"] == pytest.approx(row["update_norm"] / row["weight_norm"])
        assert sum(row["counts"]) == grads[0][key].numel()  # the √v̂ histogram holds every element


def test_sgd_momentum_buffer(tmp_path):
    grads, weights = _train(tmp_path, "sgd", steps=10, save_at=(10,))
    rows, _ = _rows(tmp_path / "step=10.ckpt")
    row = rows["model.fc2.weight"]
    buf = torch.zeros_like(grads[0]["fc2.weight"])
    for g in grads:  # torch SGD: buf = momentum * buf + g (dampening 0), the first step buf = g
        buf = 0.9 * buf + g["fc2.weight"]
    assert row["moments"] == MomentKind.SGD_MOMENTUM and math.isnan(row["grad_rms"])
    assert row["m_norm"] == pytest.approx(torch.linalg.norm(buf).item(), rel=1e-5)
    taken = weights[10]["fc2.weight"] - weights[9]["fc2.weight"]  # p -= lr * buf
    assert row["update_norm"] == pytest.approx(torch.linalg.norm(taken).item(), rel=1e-4)


def test_hf_style_weight_decay_groups_are_laid_over_in_file_order(tmp_path):
    torch.manual_seed(0)
    net = _Net()
    decay = [net.fc1.weight, net.fc2.weight]
    no_decay = [net.fc1.bias, net.fc2.bias]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}])
    net(torch.randn(3, 6)).sum().backward()
    opt.step()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pt")
    with open_checkpoint(tmp_path / "ckpt.pt") as ckpt:
        classify(ckpt)
        placed = held_tensors(ckpt, ckpt.optimizers[0])
    assert [placed[i].name for i in range(4)] == ["fc1.weight", "fc2.weight", "fc1.bias", "fc2.bias"]


def test_adam_numbers_by_hand():
    stats = adam_stats(torch.tensor([0.1, -0.2]), torch.tensor([0.01, 0.04]), 1.0, lr=0.5, betas=(0.9, 0.999),
                       eps=0.0, weight=torch.tensor([3.0, 4.0]))
    # m̂ = m / 0.1 = [1, -2]; v̂ = v / 0.001 = [10, 40]; √v̂ = [3.162.., 6.324..]; u = 0.5 m̂ / √v̂
    assert stats.grad_rms == pytest.approx(math.sqrt((10 + 40) / 2))
    assert stats.m_norm == pytest.approx(math.sqrt(1 + 4))
    u = [0.5 * 1 / math.sqrt(10), 0.5 * -2 / math.sqrt(40)]
    assert stats.update_norm == pytest.approx(math.hypot(*u))
    assert stats.update_ratio == pytest.approx(math.hypot(*u) / 5.0)  # ||W|| = 5


def test_numba_and_torch_paths_agree():
    import numpy as np

    from ckptboard.core.diff import _cpu_kernels
    from ckptboard.core.gradients import _adam_numba, _adam_torch

    torch.manual_seed(0)
    tensors = (torch.randn(200, 50) * 1e-3, torch.rand(200, 50) * 1e-6, torch.randn(200, 50))
    fast = _adam_numba(tensors, 0.5, 0.1, 1e-3, 1e-8, _cpu_kernels())
    slow = _adam_torch(tensors, 0.5, 0.1, 1e-3, 1e-8, torch.device("cpu"))
    assert fast[:5] == pytest.approx(slow[:5], rel=1e-12)
    assert np.array_equal(fast[5], slow[5])


def test_odd_optimizer_state_gives_no_row_and_no_failure(tmp_path):
    # Hostile or foreign state: moments of different shapes, Adam state without betas, a non-tensor momentum buffer.
    state = {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(4, 2), "exp_avg_sq": torch.ones(3)},
             1: {"step": torch.tensor(3.0), "exp_avg": torch.ones(3), "exp_avg_sq": torch.ones(3)},
             2: {"momentum_buffer": None}}
    optimizer = {"state": state, "param_groups": [{"params": [0, 1], "lr": 0.1, "betas": [0.9, 0.99], "eps": 1e-8},
                                                  {"params": [2], "lr": "not a number"}]}
    torch.save({"model": {"w": torch.ones(4, 2), "b": torch.ones(3), "c": torch.ones(5)}, "optim": optimizer},
               tmp_path / "odd.pt")
    rows, _ = _rows(tmp_path / "odd.pt")
    assert list(rows) == ["b"]  # only entry 1 is a usable pair of Adam moments
    assert rows["b"]["grad_rms"] == pytest.approx(math.sqrt(1 / (1 - 0.99 ** 3)))  # v = 1 everywhere, bias-corrected


def test_hf_trainer_checkpoint_gradients_from_optimizer_pt(tmp_path):
    pytest.importorskip("transformers")
    from _fixtures_layouts import hf_trainer_run

    from ckptboard.core.load import load_stats
    from ckptboard.core.summarize import summarize

    hf_trainer_run(tmp_path / "run")  # real Trainer: AdamW, weight decay groups, model.safetensors + optimizer.pt
    assert not summarize(tmp_path).failures
    grads = load_stats(tmp_path).gradients
    last = grads[grads["step"] == 4]
    state = torch.load(tmp_path / "run" / "checkpoint-4" / "optimizer.pt")
    assert len(last) == len(state["state"]) and set(last["moments"]) == {"adam"}
    assert set(last["opt_step"]) == {4.0}
    b2 = state["param_groups"][0]["betas"][1]
    for row in last.itertuples():
        v = state["state"][int(row.param_id)]["exp_avg_sq"].double() / (1 - b2 ** 4)
        assert row.grad_rms == pytest.approx(math.sqrt(v.mean().item()), rel=1e-6)
    # safetensors sorts its keys: only entries of a shape found once are named, the others keep their index
    named = last[~last["name"].str.startswith("[")]
    assert len(named) >= 1
    for row in named.itertuples():
        shape = tuple(state["state"][int(row.param_id)]["exp_avg"].shape)
        assert sum(tuple(s["exp_avg"].shape) == shape for s in state["state"].values()) == 1
