"""Training scalars from the logs the real Trainer and Lightning CSVLogger write beside their checkpoints."""

from __future__ import annotations

import json

import pytest
from _fixtures_layouts import hf_trainer_run, lightning_run

from ckptboard.core.layouts.logs import log_file, log_scalars


@pytest.fixture(scope="module")
def trainer_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer_logs") / "out"
    hf_trainer_run(out)
    return out


def test_trainer_log_history_split_between_checkpoints(trainer_out):
    history = json.loads((trainer_out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    first = log_scalars(trainer_out / "checkpoint-2", 2, None)
    second = log_scalars(trainer_out / "checkpoint-4", 4, 2)
    assert {r.step for r in first} == {1, 2} and {r.step for r in second} == {3, 4}
    # every numeric key of every log_history entry, once over the two checkpoints
    expected = sorted((e["step"], k, float(v)) for e in history for k, v in e.items()
                      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool))
    assert sorted((r.step, r.name, r.value) for r in first + second) == expected
    # (the end-of-training train_loss entry comes after the last save: no checkpoint holds it)
    assert {r.name for r in second} == {"loss", "learning_rate", "grad_norm", "epoch"}
    assert {r.source for r in first} == {"trainer_state.json"}


def test_lightning_metrics_csv_beside_checkpoints(tmp_path):
    version = lightning_run(tmp_path)
    ckpts = version / "checkpoints"
    assert log_file(ckpts / "epoch=0-step=4.ckpt") == version / "metrics.csv"
    rows = log_scalars(ckpts / "epoch=0-step=2.ckpt", 2, None) + log_scalars(ckpts / "epoch=0-step=4.ckpt", 4, 2)
    # CSVLogger logs train_loss at global steps 0..3 (log_every_n_steps=1, 4 steps), with the epoch beside it
    assert sorted({(r.step, r.name) for r in rows}) == [(s, n) for s in range(4) for n in ("epoch", "train_loss")]


def test_no_log_no_step_no_rows(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"")
    assert log_file(tmp_path / "a.pt") is None
    assert log_scalars(tmp_path / "a.pt", 3, None) == []


def test_training_scalars_table_export_and_scalars_view(trainer_out, tmp_path, capsys):
    import pandas as pd

    from _fixtures_app import app_test
    from ckptboard.core.load import load_stats
    from ckptboard.core.summarize import summarize
    from ckptboard.dashboard.cli import main
    from ckptboard.dashboard.views import View

    root = trainer_out.parent
    assert summarize(root).ok
    table = load_stats(root).training_scalars
    history = json.loads((trainer_out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    # 4 logged steps x (loss, grad_norm, learning_rate, epoch), each held by the checkpoint that followed it
    assert len(table) == 4 * 4 == sum(len(e) - 1 for e in history)
    assert table.groupby("checkpoint")["step"].agg(["min", "max"]).to_dict("index") == {
        "out/checkpoint-2": {"min": 1, "max": 2}, "out/checkpoint-4": {"min": 3, "max": 4}}
    loss = table[table["name"] == "loss"].sort_values("step")["value"].tolist()
    assert loss == [e["loss"] for e in history]

    assert main(["export", str(root), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    exported = pd.read_csv(tmp_path / "out" / "training_scalars.csv")
    assert list(exported.columns) == ["run", "checkpoint", "step", "source", "name", "value"]
    assert len(exported) == 16 and set(exported["source"]) == {"trainer_state.json"}

    at = app_test(str(root))
    at.session_state["view"] = View.SCALARS
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect(key="scalars_training").value == ["loss"]
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith("-scalars_training_chart")]
    assert len(charts) == 1
