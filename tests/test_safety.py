"""Bad input: one error naming the file and the problem; a malicious pickle never runs without trust."""

from __future__ import annotations

import json
import pickle
import zipfile

import pytest
import torch
from _fixtures_ckpt import ExecPayload, InertPayload, OpenPayload, SystemPayload, lightning_dict, save, trained_net
from safetensors.torch import save_file

from ckptboard.core.errors import CorruptCheckpointError, NotACheckpointError, UnsafeCheckpointError
from ckptboard.core.reader import open_checkpoint

PAYLOADS = [SystemPayload, ExecPayload, OpenPayload]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("where", ["zip", "legacy", "lightning-metadata", "nested-in-state-dict"])
def test_malicious_pickle_never_runs(tmp_path, payload, where):
    marker = tmp_path / "pwned"
    evil = payload(marker)
    net, opt = trained_net()
    obj = {
        "zip": evil,
        "legacy": evil,
        "lightning-metadata": {**lightning_dict(net, opt), "hyper_parameters": {"cfg": evil}},
        "nested-in-state-dict": {"state_dict": net.state_dict(), "extra": [{"deep": evil}]},
    }[where]
    path = save(obj, tmp_path / "evil.ckpt", legacy=where == "legacy")
    for device in ("cpu", torch.device("cpu")):
        with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt: the pickle calls (posix|builtins|io|_io)\.\w+, .*--trust"):
            open_checkpoint(path, device=device)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_payload_is_live_under_trust(tmp_path, legacy):
    """The payloads above are real: with trust=True torch.load runs them (so the tests above can fail)."""
    marker = tmp_path / "ran"
    path = save({"cfg": SystemPayload(marker)}, tmp_path / "evil.pt", legacy=legacy)
    with open_checkpoint(path, trust=True) as ckpt:
        assert "trusted" in ckpt.notes[0]
    assert marker.exists()


def test_unknown_global_is_inert_and_listed(tmp_path):
    """A global outside the deny list is not refused, only replaced by a placeholder that is never called."""
    marker = tmp_path / "ran"
    net, _ = trained_net()
    path = save({"state_dict": net.state_dict(), "hook": InertPayload(marker)}, tmp_path / "inert.pt")
    with open_checkpoint(path) as ckpt:
        assert any(g.endswith("create_file") for g in ckpt.skipped_globals)
        assert ckpt.metadata["hook"]["__skipped__"].endswith("create_file")
        assert ckpt.metadata["hook"]["args"] == [str(marker)]
        assert len(ckpt.tensors) == len(net.state_dict())
    assert not marker.exists()


def _truncated_zip(tmp_path):
    path = save({"w": torch.ones(1000)}, tmp_path / "cut.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _foreign_zip(tmp_path):
    path = tmp_path / "foreign.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    return path


def _write(name, data):
    def make(tmp_path):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return make


def _corrupt_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.ones(4)}, path)
    data = bytearray(path.read_bytes())
    data[8:12] = b"{{{x"  # header JSON broken, length unchanged
    path.write_bytes(bytes(data))
    return path


def _truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(64)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    return path


def _truncated_legacy(tmp_path):
    path = save({"w": torch.ones(1000)}, tmp_path / "cut_legacy.pt", legacy=True)
    path.write_bytes(path.read_bytes()[:-100])
    return path


def _missing_record(tmp_path):
    src = save({"w": torch.ones(4)}, tmp_path / "src.pt")
    path = tmp_path / "norecord.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("/data/0"):
                zout.writestr(item, zin.read(item))
    return path


def _missing_shard(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"a": torch.ones(2)}, folder / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda tmp_path: tmp_path / "missing.pt", NotACheckpointError, "no such file or folder"),
        (_write("empty.pt", b""), NotACheckpointError, r"empty file \(0 bytes\)"),
        (_write("random.pt", bytes(range(256)) * 8), NotACheckpointError, "no torch.save zip, legacy torch.save or safetensors"),
        (_write("config.json", b'{"lr": 0.1, "layers": [1, 2, 3]}'), NotACheckpointError, "no torch.save zip"),
        (_write("plain.pkl", pickle.dumps({"a": 1}, protocol=2)), NotACheckpointError, "plain pickle"),
        (_foreign_zip, NotACheckpointError, "zip archive without data.pkl"),
        (_truncated_zip, CorruptCheckpointError, "truncated or damaged zip"),
        (_truncated_legacy, CorruptCheckpointError, "truncated"),
        (_corrupt_safetensors, CorruptCheckpointError, "header is not valid JSON"),
        (_truncated_safetensors, CorruptCheckpointError, r"tensor w is truncated"),
        (_missing_record, CorruptCheckpointError, r"storage record .*/data/0 is missing"),
        (_missing_shard, CorruptCheckpointError, "shard model-00002-of-00002.safetensors is missing"),
        (lambda tmp_path: tmp_path, NotACheckpointError, "a folder without model.safetensors.index.json"),
    ],
    ids=["missing", "empty", "random", "json", "plain-pickle", "foreign-zip", "truncated-zip", "truncated-legacy",
         "bad-safetensors-header", "truncated-safetensors", "missing-record", "missing-shard", "plain-folder"],
)
def test_bad_input_gives_one_error_naming_the_file(tmp_path, make, error, message):
    path = make(tmp_path)
    with pytest.raises(error, match=message) as caught:
        open_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_tensor_record_overrunning_its_storage_is_corrupt(tmp_path):
    """A hand-edited pickle claiming more elements than the storage holds is refused before any read."""
    path = save({"w": torch.ones(4)}, tmp_path / "overrun.pt")
    with zipfile.ZipFile(path) as zin:
        items = [(i, zin.read(i)) for i in zin.infolist()]
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as zout:
        for item, data in items:
            if item.filename.endswith("data.pkl"):
                # the size tuple (4,) is pickled as K\x04\x85 (BININT1 4, TUPLE1); make it (9,)
                assert data.count(b"K\x04\x85") == 1
                data = data.replace(b"K\x04\x85", b"K\x09\x85")
            zout.writestr(item, data)
    with pytest.raises(CorruptCheckpointError, match=r"bad\.pt: bad tensor record .*overruns its storage \(16 bytes\)"):
        open_checkpoint(bad)
