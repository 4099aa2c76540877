"""``export --format tensorboard``: event files read back with TensorBoard's own event reader."""

import numpy as np
import pytest

from _fixtures_runs import write_lightning_run, write_safetensors_run
from ckptboard.core.summarize import summarize
from ckptboard.core.load import load_stats
from ckptboard.dashboard.export_tensorboard import write_tensorboard

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _accumulator(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={
        event_accumulator.HISTOGRAMS: 0, event_accumulator.SCALARS: 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_lightning_run(root / "lit", n_checkpoints=3)
    write_safetensors_run(root / "st", n_checkpoints=2)
    summarize(root, workers=1)
    tables = load_stats(root)
    out = tmp_path_factory.mktemp("out")
    files = write_tensorboard(tables, out)
    return tables, out, files


def test_one_folder_of_events_per_run(exported):
    _, out, files = exported
    assert sorted({f.parent.name for f in files}) == ["lit", "st"]
    assert all(f.name.startswith("events.out.tfevents.") for f in files)


def test_histograms_carry_our_bins(exported):
    tables, out, _ = exported
    acc = _accumulator(out / "tensorboard" / "lit")
    events = acc.Histograms("state_dict:fc.weight")
    hist = tables.histograms
    ours = hist[(hist["run"] == "lit") & (hist["name"] == "fc.weight")].sort_values("step")
    assert [e.step for e in events] == ours["step"].astype(int).tolist()  # steps 0, 2, 4
    for event, row in zip(events, ours.itertuples()):
        value = event.histogram_value
        assert value.num == sum(row.counts) == 12  # fc is Linear(4, 3): 12 finite values
        # every bin's upper edge is a bucket limit holding exactly that bin's count
        limits = list(value.bucket_limit)
        for hi, count in zip(row.hi, row.counts):
            assert value.bucket[limits.index(hi)] == count
        assert sum(value.bucket) == value.num
    stats = tables.tensors
    last = stats[(stats["run"] == "lit") & (stats["name"] == "fc.weight")].sort_values("step").iloc[-1]
    assert events[-1].histogram_value.min == last["min"] and events[-1].histogram_value.max == last["max"]
    assert events[-1].histogram_value.sum_squares == pytest.approx(last["norm"] ** 2)


def test_scalars_are_the_tables_values(exported):
    tables, out, _ = exported
    acc = _accumulator(out / "tensorboard" / "st")
    tags = acc.Tags()["scalars"]
    assert "norm/head.weight" in tags and "update_ratio/head.weight" in tags
    stats = tables.tensors
    ours = stats[(stats["run"] == "st") & (stats["name"] == "head.weight")].sort_values("step")
    read = acc.Scalars("norm/head.weight")
    assert [e.step for e in read] == ours["step"].astype(int).tolist()
    assert np.allclose([e.value for e in read], ours["norm"], rtol=1e-6)  # TensorBoard stores float32
    # wall time is the checkpoint's mtime, so TensorBoard's "relative" axis shows training time
    mtimes = tables.checkpoints.set_index("checkpoint")["mtime"]
    assert read[0].wall_time == pytest.approx(mtimes[ours["checkpoint"].iloc[0]])


def test_exporting_again_replaces_the_event_files(exported, tmp_path):
    tables, _, _ = exported
    first = write_tensorboard(tables, tmp_path)
    second = write_tensorboard(tables, tmp_path)
    assert len(first) == len(second) == 2
    assert sorted((tmp_path / "tensorboard").rglob("events.out.tfevents.*")) == sorted(second)


def test_export_command_writes_tensorboard(tmp_path):
    from ckptboard.dashboard.cli import main

    write_lightning_run(tmp_path / "runs" / "lit", n_checkpoints=2)
    code = main(["export", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--format", "csv,tensorboard",
                 "--workers", "1"])
    assert code == 0
    acc = _accumulator(tmp_path / "out" / "tensorboard" / "lit")
    assert "state_dict:fc.weight" in acc.Tags()["histograms"]
    assert (tmp_path / "out" / "stats.csv").exists()


def test_spectral_gradients_and_training_scalars_become_tags(tmp_path):
    import pandas as pd

    root = tmp_path / "runs"
    write_lightning_run(root / "lit", n_checkpoints=3)  # SGD with momentum
    summarize(root, workers=1, spectral="default")
    tables = load_stats(root)
    last = tables.checkpoints.sort_values("step")["checkpoint"].iloc[-1]
    # what a trainer logged between checkpoints, as the training_scalars table holds it
    tables.training_scalars = pd.DataFrame([
        {"run": "lit", "checkpoint": last, "step": 3, "source": "trainer_state.json", "name": "train/loss", "value": 0.5},
        {"run": "lit", "checkpoint": last, "step": 4, "source": "trainer_state.json", "name": "train/loss", "value": 0.25},
    ])
    write_tensorboard(tables, tmp_path / "out")
    acc = _accumulator(tmp_path / "out" / "tensorboard" / "lit")
    tags = acc.Tags()["scalars"]
    assert "spectral/stable_rank/state_dict:fc.weight" in tags
    assert "gradients/m_norm/state_dict:fc.weight" in tags
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(3, 0.5), (4, 0.25)]
    spectral = tables.spectral[(tables.spectral["name"] == "fc.weight")].sort_values("step")
    read = acc.Scalars("spectral/sigma_max/state_dict:fc.weight")
    assert np.allclose([e.value for e in read], spectral["sigma_max"], rtol=1e-6)
