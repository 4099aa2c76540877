"""Megatron-Core ``torch_dist`` checkpoints (``iter_NNNNNNN/`` DCP folders with ``common.pt`` and ``metadata.json``),
written by real ``torch.distributed.checkpoint`` over two gloo ranks exactly as Megatron's save strategy drives it
(Megatron itself does not run here: see the fixture's docstring), and TransformerEngine's ``_extra_state``."""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile

import pytest
import torch
from _fixtures_layouts import CodeRunningPayload, megatron_dist_checkpoint

from ckptboard.core.classify import classify
from ckptboard.core.discover import discover
from ckptboard.core.errors import CorruptCheckpointError, UnsafeCheckpointError
from ckptboard.core.formats.safe_unpickle import BytesBuffer, LazyStorage, load_pickle
from ckptboard.core.gradients import gradient_rows
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import CheckpointFormat, StepSource
from ckptboard.dashboard.cli import main

pytestmark = pytest.mark.slow  # each fixture spawns two gloo ranks


@pytest.fixture(scope="module")
def megatron_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("megatron")
    weights = megatron_dist_checkpoint(root / "run", iterations=(100, 200))
    return root, weights


def test_iteration_folders_are_one_run(megatron_run):
    root, _ = megatron_run
    runs = discover(root)
    # latest_checkpointed_iteration.txt is no checkpoint; common.pt and metadata.json belong to their folder
    assert [(r.name, [c.relpath for c in r.checkpoints]) for r in runs] == [
        ("run", ["run/iter_0000100", "run/iter_0000200"])]
    folder = runs[0].checkpoints[0]
    assert folder.size == sum(f.stat().st_size for f in folder.path.iterdir())  # every file is in the identity


def _per_layer(weights: dict) -> dict[str, torch.Tensor]:
    """The fixture's weights as the layout lists them: a stacked tensor as one tensor per layer, layer by layer."""
    stacked = {k: t for k, (t, _, s) in weights.items() if s}
    out = {k.replace("layers.", f"layers.{i}.", 1): t[i] for i in range(2) for k, t in stacked.items()}
    return out | {k: t for k, (t, _, s) in weights.items() if not s}


def test_tensors_listed_per_layer_and_assembled_from_both_ranks(megatron_run):
    root, weights = megatron_run
    expected = _per_layer(weights[100])
    with open_checkpoint(root / "run" / "iter_0000100") as ckpt:
        classify(ckpt)
        assert ckpt.format == CheckpointFormat.DCP and ckpt.metadata["megatron_backend"] == "torch_dist"
        assert (ckpt.step, ckpt.step_source) == (100, StepSource.ITERATION)  # common.pt's iteration
        # optimizer.state.* (param, exp_avg, exp_avg_sq), TE extra state and rng_state are not model tensors;
        # decoder.layers.self_attention.linear_qkv.weight (2, 24, 8), one chunk per layer and rank, is listed per layer
        assert [t.name for t in ckpt.tensors] == list(expected)
        assert [t.name for t in ckpt.tensors][:2] == ["decoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
                                                       "decoder.layers.0.self_attention.linear_qkv.weight"]
        qkv = next(t for t in ckpt.tensors if t.name == "decoder.layers.1.self_attention.linear_qkv.weight")
        assert qkv.shape == (24, 8)  # (3 * hidden, hidden): both tensor-parallel halves of layer 1
        for info in ckpt.tensors:  # rank 0's and rank 1's chunks of the layer, put back in place
            assert torch.equal(ckpt.load(info), expected[info.name]), info.name
        assert {(t.trainable, t.source) for t in ckpt.tensors} == {("true", "optimizer:held")}
        assert ckpt.optimizers[0].state_names == ["exp_avg", "exp_avg_sq", "param"]
        assert ckpt.metadata["megatron_extra_state"] == 4  # qkv, proj, fc1, fc2 of the stacked layers
        assert any("4 TransformerEngine _extra_state entries (8 pickled values" in n for n in ckpt.notes)
        assert any("8 layer-stacked tensors" in n and "listed per layer" in n for n in ckpt.notes)
        assert ckpt.metadata["dcp_files"] == 2


def test_gradients_from_the_fully_reshardable_optimizer_state(megatron_run):
    root, weights = megatron_run
    expected = _per_layer(weights[200])
    with open_checkpoint(root / "run" / "iter_0000200") as ckpt:
        classify(ckpt)
        rows, notes = gradient_rows(ckpt)
    assert not notes and sorted(r["name"] for r in rows) == sorted(expected)  # per layer, as the weights
    b2 = 0.95  # common.pt: optimizer.optimizer.param_groups[0], step 200
    for row in rows:
        w = expected[row["name"]].double()
        v_hat = (w.abs() * 1e-3) / (1 - b2**200)  # the fixture's exp_avg_sq = |W| · 1e-3
        assert row["opt_step"] == 200 and row["lr"] == 3e-4
        assert row["grad_rms"] == pytest.approx(v_hat.mean().sqrt().item(), rel=1e-6)
        assert row["weight_norm"] == pytest.approx(torch.linalg.norm(w).item(), rel=1e-6)


def test_summarize_and_export_a_megatron_run(megatron_run, tmp_path):
    import pandas as pd

    from ckptboard.core.load import load_stats
    from ckptboard.core.summarize import summarize

    root, weights = megatron_run
    cache = tmp_path / "cache"
    assert not summarize(root, cache_dir=cache).failures
    tables = load_stats(root, cache_dir=cache)
    assert sorted(set(tables.tensors["checkpoint"])) == ["run/iter_0000100", "run/iter_0000200"]
    assert sorted(set(tables.tensors["step"])) == [100, 200]
    per_layer = tables.tensors[tables.tensors["name"].str.startswith("decoder.layers.1.")]
    assert len(per_layer) == 2 * 8  # 8 stacked parameters, layer 1 of each, in 2 checkpoints
    row = per_layer[(per_layer["step"] == 100) & (per_layer["name"] == "decoder.layers.1.mlp.linear_fc1.weight")]
    w = weights[100]["decoder.layers.mlp.linear_fc1.weight"][0][1].double()
    assert row["norm"].item() == pytest.approx(torch.linalg.norm(w).item(), rel=1e-6)
    assert len(tables.gradients) == 2 * 19
    out = tmp_path / "out"
    assert main(["export", str(root), "--cache-dir", str(cache), "--out", str(out), "--format", "csv"]) == 0
    assert len(pd.read_csv(out / "gradients.csv")) == 2 * 19


def test_common_state_inside_the_dcp(tmp_path):
    # Megatron-Core after July 2026: no common.pt; the common state is the DCP value common_state
    megatron_dist_checkpoint(tmp_path / "run", iterations=(300,), common_in_dcp=True)
    folder = tmp_path / "run" / "iter_0000300"
    assert not (folder / "common.pt").exists()
    with open_checkpoint(folder) as ckpt:
        assert (ckpt.step, ckpt.step_source) == (300, StepSource.ITERATION)
        assert ckpt.metadata["num_floating_point_operations_so_far"] == 1.5e12
        assert len(ckpt.tensors) == 19  # 8 stacked tensors x 2 layers + 3


def _copy(megatron_run, tmp_path):
    root, _ = megatron_run
    folder = tmp_path / "iter_0000100"
    shutil.copytree(root / "run" / "iter_0000100", folder)
    return folder


def test_unfinished_save_and_other_backends_fail_in_one_line(megatron_run, tmp_path, capsys):
    folder = _copy(megatron_run, tmp_path)
    (folder / "metadata.json").unlink()  # Megatron writes it last
    with pytest.raises(CorruptCheckpointError, match="without metadata.json, which Megatron writes last"):
        open_checkpoint(folder)
    (folder / "metadata.json").write_text('{"sharded_backend": "zarr", "sharded_backend_version": 1}')
    with pytest.raises(CorruptCheckpointError, match="the 'zarr' backend: only 'torch_dist' is read"):
        open_checkpoint(folder)
    assert main(["inspect", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("CorruptCheckpointError: ") and err.strip().count("\n") == 0 and "Traceback" not in out + err


def test_common_pt_that_runs_code_is_a_note_and_never_run(megatron_run, tmp_path):
    folder = _copy(megatron_run, tmp_path)
    marker = tmp_path / "ran"
    torch.save({"iteration": 100, "args": CodeRunningPayload(marker)}, folder / "common.pt")
    with open_checkpoint(folder) as ckpt:
        assert any(n.startswith("common.pt is not read") and "posix.system" in n for n in ckpt.notes)
        assert (ckpt.step, ckpt.step_source) == (100, StepSource.FILENAME)  # iter_0000100
        assert len(ckpt.tensors) == 19  # 8 stacked tensors x 2 layers + 3
    assert not marker.exists()


# --- TransformerEngine's _extra_state: an io.BytesIO in torch.save files -------------------------------------------


def _te_state_dict():
    """A TE layer's state_dict as ``torch.save`` pickles it: ``_extra_state`` is TE 1.x's ``get_extra_state``, the
    FP8 metadata ``torch.save``d into an ``io.BytesIO``."""
    extra = io.BytesIO()
    torch.save({"scale_fwd": torch.ones(3)}, extra)
    return {"linear_qkv.weight": torch.randn(6, 4), "linear_qkv.layer_norm_weight": torch.ones(4),
            "linear_qkv._extra_state": extra}


def test_te_extra_state_bytesio_is_read_as_data_and_never_unpickled(tmp_path):
    torch.save({"model": _te_state_dict(), "iteration": 7}, tmp_path / "model_optim_rng.pt")
    with open_checkpoint(tmp_path / "model_optim_rng.pt") as ckpt:
        assert [t.name for t in ckpt.tensors] == ["linear_qkv.weight", "linear_qkv.layer_norm_weight"]
        assert ckpt.step == 7 and not ckpt.skipped_globals  # io.BytesIO is allowed, not skipped
    with zipfile.ZipFile(tmp_path / "model_optim_rng.pt") as zf:
        pickled = zf.read("model_optim_rng/data.pkl")
    root, _ = load_pickle(io.BytesIO(pickled), "x", lambda dtype, key, where, n, _: LazyStorage(key, dtype, n, where))
    extra = root["model"]["linear_qkv._extra_state"]
    assert isinstance(extra, BytesBuffer) and extra.nbytes == len(_te_state_dict()["linear_qkv._extra_state"].getvalue())


def _pickle_calls(payload: bytes) -> bytes:
    return b"\x80\x02" + payload + b"."


@pytest.mark.parametrize("name, pickled, error", [
    # another class of the io module: a file object, which would open a path
    ("FileIO", _pickle_calls(b"c_io\nFileIO\nX\x0b\x00\x00\x00/etc/passwd\x85R"), "calls _io.FileIO"),
    ("open", _pickle_calls(b"cio\nopen\nX\x0b\x00\x00\x00/etc/passwd\x85R"), "calls io.open"),
    # BytesIO built by a call with arguments, then BUILD: not what pickle writes for a BytesIO
    ("bytesio-args", _pickle_calls(b"c_io\nBytesIO\nC\x01a\x85R(C\x01aK\x00Ntb"), "io.BytesIO state"),
    # BytesIO whose state is not (bytes, position, dict)
    ("bytesio-state", _pickle_calls(b"c_io\nBytesIO\n)\x81}b"), "io.BytesIO state"),
], ids=["FileIO", "open", "bytesio-args", "bytesio-state"])
def test_bytesio_look_alikes_are_refused(name, pickled, error):
    with pytest.raises((UnsafeCheckpointError, CorruptCheckpointError), match=error):
        load_pickle(io.BytesIO(pickled), "hostile.pt")


def test_bytesio_whose_state_runs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Evil(io.BytesIO):
        def __reduce_ex__(self, protocol):
            return (io.BytesIO, (), (b"data", 0, {"x": CodeRunningPayload(marker)}))

    pickled = pickle.dumps({"w._extra_state": Evil()}, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_pickle(io.BytesIO(pickled), "hostile.pt")
    assert not marker.exists()


def test_a_stacked_tensor_in_one_chunk_stays_stacked_with_a_note(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp

    # no per-layer chunks (a single-process save of the whole stack): nothing to split by, so listed as saved
    folder = tmp_path / "iter_0000010"
    stack = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"decoder.layers.mlp.linear_fc1.weight": stack, "output_layer.weight": torch.ones(5, 3)},
                 checkpoint_id=str(folder))
    torch.save({"iteration": 10}, folder / "common.pt")
    (folder / "metadata.json").write_text('{"sharded_backend": "torch_dist", "sharded_backend_version": 1}')
    with open_checkpoint(folder) as ckpt:
        assert [(t.name, t.shape) for t in ckpt.tensors] == [
            ("decoder.layers.mlp.linear_fc1.weight", (2, 4, 3)), ("output_layer.weight", (5, 3))]
        assert any("1 layer-stacked tensors whose chunks span several layers are listed stacked" in n
                   for n in ckpt.notes)
        assert torch.equal(ckpt.load(ckpt.tensors[0]), stack)
