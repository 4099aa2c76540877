"""Gradient statistics from the optimizer state that accelerate ``save_state`` and ``torch.distributed.checkpoint``
saved during real training runs, checked against the same state read back by the libraries themselves."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from _fixtures_layouts import CodeRunningPayload, accelerate_adam_run, dcp_train_run
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from ckptboard.core.load import load_stats
from ckptboard.core.summarize import summarize
from ckptboard.dashboard.cli import main

_COLUMNS = ["grad_rms", "grad_rms_max", "m_norm", "update_norm", "weight_norm", "update_ratio"]


def _by_hand(state: dict, hyper: dict, weight: torch.Tensor) -> dict[str, float]:
    """The gradients table's numbers from one parameter's Adam state, in float64 (see core/gradients.py):
    m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ), grad_rms = √mean(v̂), update = lr · m̂ / (√v̂ + ε)."""
    b1, b2 = hyper["betas"]
    t = float(state["step"])
    m_hat = state["exp_avg"].double() / (1 - b1**t)
    v_hat = state["exp_avg_sq"].double() / (1 - b2**t)
    update = hyper["lr"] * m_hat / (v_hat.sqrt() + hyper["eps"])
    w_norm = torch.linalg.norm(weight.double()).item()
    u_norm = torch.linalg.norm(update).item()
    return {"grad_rms": v_hat.mean().sqrt().item(), "grad_rms_max": v_hat.sqrt().max().item(),
            "m_norm": torch.linalg.norm(m_hat).item(), "update_norm": u_norm, "weight_norm": w_norm,
            "update_ratio": u_norm / w_norm}


def _assert_row(row, expected: dict[str, float]) -> None:
    for column, value in expected.items():
        assert getattr(row, column) == pytest.approx(value, rel=1e-6), (row.name, column)


def test_accelerate_optimizer_bin_gives_gradients_by_parameter_name(tmp_path):
    from safetensors.torch import load_file

    model = accelerate_adam_run(tmp_path / "run")  # Adam(lr=1e-2, betas=(0.9, 0.99)), three save_state calls
    assert not summarize(tmp_path).failures
    grads = load_stats(tmp_path).gradients
    names = [n for n, _ in model.named_parameters()]  # the optimizer's param ids 0..3 in this order
    # checkpoint_N holds the state after N + 1 steps; the step axis is the folder's index (README: accelerate)
    assert sorted(set(zip(grads["step"], grads["opt_step"]))) == [(0, 1.0), (1, 2.0), (2, 3.0)]
    folders = tmp_path / "run" / "checkpoints"
    for index in range(3):
        folder = folders / f"checkpoint_{index}"
        saved = torch.load(folder / "optimizer.bin", weights_only=True)  # what accelerate wrote, read by torch
        weights = load_file(folder / "model.safetensors")
        rows = grads[grads["checkpoint"] == f"run/checkpoints/checkpoint_{index}"].set_index("param_id")
        assert list(rows["name"]) == names and set(rows["optimizer"]) == {"optimizer.bin"}
        assert set(rows["moments"]) == {"adam"}
        for pid, name in enumerate(names):
            row = rows.loc[str(pid)]
            _assert_row(row, _by_hand(saved["state"][pid], saved["param_groups"][0], weights[name]))
    # Adam without weight decay: the update the state at step 3 gives is the step the weights took (3 minus 2)
    w2, w3 = (load_file(folders / f"checkpoint_{i}" / "model.safetensors") for i in (1, 2))
    last = grads[grads["step"] == 2].set_index("name")
    for name in names:
        taken = torch.linalg.norm((w3[name] - w2[name]).double()).item()
        assert last.loc[name, "update_norm"] == pytest.approx(taken, rel=1e-4), name


def _dcp_reference(folder, tmp_path, flat: bool) -> tuple[dict, dict, dict]:
    """``(weights, state by name, hyperparameters by name)`` of a DCP folder, read back by DCP itself."""
    whole = tmp_path / f"{folder.name}.pt"
    dcp_to_torch_save(folder, whole)
    sd = torch.load(whole, weights_only=False)  # our own file, written just now by DCP's conversion
    if flat:  # torchtitan: model keys at the top, optimizer.state.<fqn>.<state>, optimizer.param_groups.<fqn>.<key>
        opt = sd.pop("optimizer")
        states = {fqn: {} for fqn in {k.split(".", 1)[1].rsplit(".", 1)[0] for k in opt if k.startswith("state.")}}
        hyper = {fqn: {} for fqn in states}
        for key, value in opt.items():
            kind, rest = key.split(".", 1)
            fqn, name = rest.rsplit(".", 1)
            (states if kind == "state" else hyper)[fqn][name] = value
        return sd, states, hyper
    opt = sd["optim"]
    hyper = {fqn: group for group in opt["param_groups"] for fqn in group["params"]}
    return sd["model"], opt["state"], hyper


@pytest.mark.parametrize("flat", [False, True], ids=["get_state_dict", "torchtitan-flat"])
def test_dcp_optimizer_entries_give_gradients(tmp_path, flat):
    model = dcp_train_run(tmp_path / "runs" / "run", saves=(1, 2, 3), flat=flat)  # AdamW lr 1e-2, betas (.9, .99)
    assert not summarize(tmp_path / "runs").failures
    grads = load_stats(tmp_path / "runs").gradients
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]  # 1.weight (LayerNorm) is frozen
    assert sorted(set(zip(grads["step"], grads["opt_step"]))) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    for step in (1, 2, 3):
        weights, states, hyper = _dcp_reference(tmp_path / "runs" / "run" / f"step-{step}", tmp_path, flat)
        rows = grads[grads["step"] == step].set_index("name")
        assert sorted(rows.index) == sorted(trainable)
        assert set(rows["group"]) == {"" if flat else "model"} and set(rows["moments"]) == {"adam"}
        for name in trainable:
            assert hyper[name]["lr"] == 1e-2 and tuple(hyper[name]["betas"]) == (0.9, 0.99)
            _assert_row(rows.loc[name], _by_hand(states[name], hyper[name], weights[name]))


def test_gradients_of_a_dcp_run_reach_the_export_and_the_view(tmp_path):
    from _fixtures_app import app_test

    from ckptboard.dashboard.views import View

    dcp_train_run(tmp_path / "runs" / "run", saves=(1, 3))
    assert main(["export", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--format", "csv"]) == 0
    exported = pd.read_csv(tmp_path / "out" / "gradients.csv")
    cached = load_stats(tmp_path / "runs").gradients
    assert len(exported) == len(cached) == 2 * 5  # 2 checkpoints × 5 trainable parameters
    assert sorted(exported["name"].unique()) == ["0.bias", "0.weight", "1.bias", "2.bias", "2.weight"]
    merged = exported.merge(cached, on=["checkpoint", "name"], suffixes=("", "_cache"))
    for column in _COLUMNS:
        assert merged[column].to_numpy() == pytest.approx(merged[f"{column}_cache"].to_numpy(), rel=1e-12)

    at = app_test(str(tmp_path / "runs"))
    at.session_state["view"] = View.GRADIENTS
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("exponential moving averages" in c.value for c in at.caption)
    assert set(at.multiselect(key="grad_tensors").options) == {"0.bias", "0.weight", "1.bias", "2.bias", "2.weight"}
    assert at.selectbox(key="grad_hist_tensor").value == "0.bias"  # √v̂ histograms of the Adam state


def test_a_hyperparameter_that_runs_code_is_noted_and_never_run(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from ckptboard.core.classify import classify
    from ckptboard.core.gradients import gradient_rows
    from ckptboard.core.reader import open_checkpoint

    from _fixtures_layouts import dcp_model

    model = dcp_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    msd, osd = get_state_dict(model, opt)
    marker = tmp_path / "ran"
    osd["param_groups"][0]["lr"] = CodeRunningPayload(marker)  # pickled by dcp.save as a call of os.system
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp_path / "step-1"))
    with open_checkpoint(tmp_path / "step-1") as ckpt:
        classify(ckpt)
        assert any("optim.param_groups.0.lr is not read" in n and "posix.system" in n for n in ckpt.notes)
        rows, _ = gradient_rows(ckpt)
    assert not marker.exists()
    assert len(rows) == 5 and all(math.isnan(r["lr"]) and math.isnan(r["update_norm"]) for r in rows)
    assert all(r["grad_rms"] > 0 for r in rows)  # the moments and the other settings are still used
