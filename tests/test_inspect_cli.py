"""``ckptboard inspect``: the table, the ``--json`` contract, ``--model``/``--trust``, and bad input ending in one
line on stderr. Most cases run ``main([...])`` in-process; a few run the real console entry in a subprocess."""

import json
import pickle
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from _fixtures_zoo import build, train_one_step
from ckptboard.dashboard.cli import main


class _CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: the file exists afterwards iff the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _inspect(capsys, *argv):
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def lightning_ckpt(tmp_path):
    """A Lightning-style dict: state_dict under ``model.``, Adam state, hyper_parameters, a step."""
    model = build("frozen_backbone")
    opt = train_one_step(model, lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad]))
    path = tmp_path / "epoch=1-step=40.ckpt"
    torch.save({
        "epoch": 1,
        "global_step": 40,
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
    }, path)
    return path


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "zoo_models.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from _fixtures_zoo import build
        def frozen_backbone():
            return build("frozen_backbone")
    """))
    return path


def test_json_contract_keys_and_types(capsys, lightning_ckpt):
    code, out, err = _inspect(capsys, lightning_ckpt, "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)  # exactly one JSON object
    assert set(data) == {"path", "format", "step", "step_source", "metadata", "skipped_globals", "notes", "groups",
                         "optimizers", "tensors", "totals", "model_source"}
    assert data["model_source"] is None  # no --model, no config.json: the rules decided
    assert (data["format"], data["step"], data["step_source"]) == ("torch-zip", 40, "metadata:global_step")
    assert data["groups"] == [{"name": "state_dict", "stripped_prefix": "", "tensors": 11}]
    row = next(t for t in data["tensors"] if t["name"] == "model.backbone.1.running_var")
    assert row == {
        "group": "state_dict", "name": "model.backbone.1.running_var", "raw_name": "model.backbone.1.running_var",
        "kind": "buffer", "trainable": False, "source": "rule:batchnorm-running-stats", "shape": [4],
        "dtype": "float32", "numel": 4, "nbytes": 16, "module": "model.backbone.1", "tied_to": None,
    }
    by_name = {t["name"]: t for t in data["tensors"]}
    assert (by_name["model.head.weight"]["trainable"], by_name["model.head.weight"]["source"]) == (True, "optimizer:held")
    assert by_name["model.backbone.0.weight"]["trainable"] is False
    assert data["optimizers"][0]["params"] == 2 and data["optimizers"][0]["states"] == ["exp_avg", "exp_avg_sq", "step"]
    totals = data["totals"]
    # parameters: conv 4*3*3*3 + 4 = 112, BN 4 + 4 = 8, conv 4*4*3*3 + 4 = 148, head 4*2 + 2 = 10 -> 278;
    # trainable: head 10; frozen 268. Buffers: running_mean 4 + running_var 4 + num_batches_tracked 1 = 9.
    assert (totals["parameters"], totals["trainable_parameters"], totals["frozen_parameters"]) == (278, 10, 268)
    assert (totals["buffers"], totals["unknown_parameters"], totals["tied_tensors"]) == (9, 0, 0)
    # bytes: float32 (278 + 8) * 4 = 1144, int64 1 * 8 = 8.
    assert totals["bytes_by_dtype"] == {"float32": 1144, "int64": 8} and totals["bytes"] == 1152


def test_table_has_every_tensor_and_the_footer(capsys, lightning_ckpt):
    code, out, _ = _inspect(capsys, lightning_ckpt)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "group 'state_dict': 11 tensors"
    assert lines[1].split() == ["name", "kind", "trainable", "shape", "dtype", "size", "source"]
    head = next(line for line in lines if line.startswith("model.head.weight"))
    assert head.split() == ["model.head.weight", "parameter", "true", "[2,", "4]", "float32", "32", "B", "optimizer:held"]
    # the totals of test_json_contract_keys_and_types: 278 parameters (10 trainable, 268 frozen) in 8 tensors
    # (2 conv weights + 2 conv biases + BN weight + bias + head weight + bias); 278 * 4 B = 1112 B = 1.09 KiB
    assert "parameters: 278 (1.1 KiB) in 8 tensors: trainable 10, frozen 268, unknown 0" in lines
    assert "step: 40 (source: metadata:global_step)" in lines
    assert "format: torch-zip" in lines
    assert any(line.startswith("optimizer 'optimizer_states/0': 2 parameters in 1 param groups, state exp_avg") for line in lines)


def test_model_spec_makes_it_exact_and_adds_the_report(capsys, lightning_ckpt, model_file):
    code, out, _ = _inspect(capsys, lightning_ckpt, "--json", "--model", f"{model_file}:frozen_backbone")
    data = json.loads(out)
    assert code == 0
    assert {t["source"] for t in data["tensors"]} == {"model:named_parameters", "model:named_buffers"}
    report = data["model_report"]
    assert (report["group"], report["checkpoint_prefix"], report["matched"]) == ("state_dict", "model.", 11)
    assert report["missing_keys"] == [] and report["unexpected_keys"] == []


def test_trusted_pickled_module_is_its_own_model(capsys, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(build("non_persistent_and_custom_buffer"), path)
    code, out, err = _inspect(capsys, path, "--trust", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert next(t for t in data["tensors"] if t["name"] == "class_weights")["source"] == "model:named_buffers"
    assert data["model_report"]["plain_tensor_attributes"] == ["lookup"]


def _bad_inputs(tmp_path):
    """name -> (path, a regex the single stderr line must match)."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    good = tmp_path / "good.pt"
    torch.save(nn.Linear(3, 2).state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    random = tmp_path / "random.bin"
    random.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    as_json = tmp_path / "config.pt"
    as_json.write_text(json.dumps({"lr": 0.1}))
    foreign_zip = tmp_path / "docs.zip"
    with zipfile.ZipFile(foreign_zip, "w") as zf:
        zf.writestr("readme.txt", "no checkpoint here")
    bad_header = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, bad_header)
    raw = bytearray(bad_header.read_bytes())
    raw[8:12] = b"\xff\xfe{["  # the JSON header is no longer JSON
    bad_header.write_bytes(bytes(raw))
    whole = tmp_path / "whole_module.pt"
    torch.save(nn.Linear(2, 2), whole)
    return {
        "missing": (tmp_path / "nope.pt", r"nope\.pt: no such file"),
        "empty": (empty, r"empty\.pt"),
        "truncated": (truncated, r"truncated\.pt"),
        "random": (random, r"random\.bin"),
        "json": (as_json, r"config\.pt"),
        "foreign_zip": (foreign_zip, r"docs\.zip"),
        "corrupt_safetensors_header": (bad_header, r"model\.safetensors"),
        "pickled_module_without_trust": (whole, r"whole_module\.pt.*--trust"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "random", "json", "foreign_zip",
                                  "corrupt_safetensors_header", "pickled_module_without_trust"])
def test_bad_input_is_one_line_and_exit_1(capsys, tmp_path, case):
    path, pattern = _bad_inputs(tmp_path)[case]
    code, out, err = _inspect(capsys, path, "--json")
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert re.match(r"\w+Error: .*" + pattern, err), err


@pytest.mark.parametrize("flags", [[], ["--json"], ["--device", "cpu"], ["--model", "torch.nn:Identity"]])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_never_runs_without_trust(capsys, tmp_path, flags, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "payload": _CreatesFile(marker)}, path, _use_new_zipfile_serialization=not legacy)
    code, out, err = _inspect(capsys, path, *flags)
    assert not marker.exists()
    # Either refused, or listed with the payload skipped as an inert placeholder; never run.
    assert code in (0, 1) and len(err.splitlines()) <= 1


def test_plain_pickle_file_never_runs(capsys, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_CreatesFile(marker)))
    code, _, err = _inspect(capsys, path, "--json")
    assert not marker.exists() and code == 1 and len(err.splitlines()) == 1


def test_bad_model_spec_fails_before_opening(capsys, lightning_ckpt):
    code, out, err = _inspect(capsys, lightning_ckpt, "--model", "no_colon")
    assert (code, out) == (1, "")
    assert err.startswith("ModelSpecError: --model 'no_colon'") and len(err.splitlines()) == 1


def _console(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "ckptboard.dashboard.cli", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_console_script_json_and_missing_path(tmp_path, lightning_ckpt):
    ok = _console("inspect", lightning_ckpt, "--json", cwd=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout)["step"] == 40
    missing = _console("inspect", tmp_path / "nope.pt", cwd=tmp_path)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.splitlines() == [f"UsageError: {tmp_path / 'nope.pt'}: no such file or folder; pass a "
                                           "checkpoint file or a Hugging Face model folder"]


def test_console_script_malicious_pickle_with_model_and_json(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"payload": _CreatesFile(marker)}, path)
    result = _console("inspect", path, "--json", "--model", "torch.nn:Identity", cwd=tmp_path)
    assert not marker.exists()
    assert "Traceback" not in result.stderr


def test_core_never_imports_streamlit_or_plotly():
    code = (
        "import sys, pkgutil, importlib, ckptboard.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module('ckptboard.core.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('streamlit', 'plotly'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_bad_device_is_one_line(capsys, lightning_ckpt):
    code, out, err = _inspect(capsys, lightning_ckpt, "--device", "nonsense")
    assert (code, out) == (1, "")
    assert err.startswith("UsageError: device 'nonsense'") and len(err.splitlines()) == 1


def test_a_folder_of_runs_is_pointed_at_commands_that_exist(capsys, tmp_path):
    code, out, err = _inspect(capsys, tmp_path)
    assert (code, out) == (1, "")
    assert err.startswith("NotACheckpointError: ") and "`ckptboard summarize` or `ckptboard serve`" in err
    assert "discover" not in err  # there is no `ckptboard discover` command
