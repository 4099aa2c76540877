"""``ckptboard flops``: the JSON contract on the sample CNN, text output, and one clear line for every bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ckptboard.dashboard.cli import main

SAMPLE_MODEL = Path(__file__).resolve().parents[1] / "sample_ckpts" / "model.py"

GPT_FILE = '''
import sys
sys.path.insert(0, {tests!r})
import _fixtures_size


class TinyGPT(_fixtures_size.TinyGPT):  # --model names a class defined in the spec file itself
    pass


class NeedsItem(_fixtures_size.NeedsItem):
    pass
'''


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_sample_cnn_json(capsys):
    argv = ["flops", "--model", f"{SAMPLE_MODEL}:SmallCNN", "--input-shape", "1,3,32,32", "--json"]
    rc, out, err = _run(argv, capsys)
    assert rc == 0 and err == ""
    data = json.loads(out)
    # SmallCNN (sample_ckpts/model.py, width 16, 4 classes; 3x3 convs, padding 1, no bias), FLOP = 2 * MAC:
    # conv1 3→16, 32x32 out: 2*3*9*16*1024 = 884736; conv2 16→32 stride 2, 16x16: 2*16*9*32*256 = 2359296;
    # conv3 32→32 stride 2, 8x8: 2*32*9*32*64 = 1179648; head 32→4 (addmm; the bias add is not counted):
    # 2*32*4 = 256. Total 884736 + 2359296 + 1179648 + 256 = 4423936; MAC 4423936 / 2 = 2211968
    assert data["total_flops"] == 4423936 and data["unit"] == "FLOP" and data["macs"] == 4423936 // 2
    flops = {m["module"]: m["flops"] for m in data["modules"]}
    assert flops == {"": 4423936, "conv1": 884736, "bn1": 0, "conv2": 2359296, "bn2": 0, "conv3": 1179648,
                     "bn3": 0, "head": 256}
    ops = {op["op"]: op for op in data["unsupported_ops"]}
    assert ops["aten._native_batch_norm_legit_no_training"] == {
        "op": "aten._native_batch_norm_legit_no_training", "category": "other", "calls": 3,
        "modules": ["bn1", "bn2", "bn3"],
    }
    assert set(ops) == {"aten._native_batch_norm_legit_no_training", "aten.mean", "aten.relu", "aten.sub"}
    assert data["device"] == "meta"


def test_sample_cnn_text_and_depth(capsys):
    rc, out, _ = _run(["flops", "--model", f"{SAMPLE_MODEL}:SmallCNN", "--input-shape", "1,3,32,32", "--depth", "0"],
                      capsys)
    assert rc == 0
    assert "a multiply-add counts 2 FLOP" in out
    # the totals of test_sample_cnn_json: 4,423,936 FLOP = 2,211,968 MAC; 4423936 / 10^6 = 4.42 M
    assert "(model)  4,423,936  2,211,968  100.0%" in out
    assert "conv1" not in out.split("total:")[0]  # depth 0: the root only
    assert "total: 4,423,936 FLOP (4.42 MFLOP) = 2,211,968 MAC" in out
    assert "ops with no FLOP formula, counted as 0" in out


def test_transformer_like_model_with_token_ids(tmp_path, capsys):
    spec_file = tmp_path / "gpt.py"
    spec_file.write_text(GPT_FILE.format(tests=str(Path(__file__).parent)))
    rc, out, _ = _run(["flops", "--model", f"{spec_file}:TinyGPT", "--input-shape", "1,8", "--input-dtype", "int64",
                       "--json"], capsys)
    assert rc == 0
    assert json.loads(out)["total_flops"] == 114688  # arithmetic in test_flops_count.test_tiny_gpt_with_token_ids


def test_cpu_fallback_is_reported(tmp_path, capsys):
    spec_file = tmp_path / "gpt.py"
    spec_file.write_text(GPT_FILE.format(tests=str(Path(__file__).parent)))
    rc, out, _ = _run(["flops", "--model", f"{spec_file}:NeedsItem", "--input-shape", "2,4", "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["device"] == "cpu" and data["total_flops"] == 48  # 2*2*4*3
    assert "does not run on the meta device" in data["notes"][0]


@pytest.mark.parametrize(("spec", "shape", "message"), [
    ("{tmp}/missing.py:Net", "1,4", r"^ModelSpecError: --model .*missing.py:Net: file .* does not exist$"),
    ("{tmp}/model.py:Nope", "1,4", r"^ModelSpecError: .* has no attribute 'Nope'"),
    ("{tmp}/model.py:broken", "1,4", r"^ModelSpecError: .*the factory raised ValueError: no such width"),
    ("{tmp}/model.py:Net", "1,5", r"^FlopCountError: the forward of Net failed on input \(1,5\) float32: RuntimeError"),
    ("{tmp}/model.py:Net", "1,x", r"^UsageError: --input-shape '1,x'"),
])
def test_bad_spec_or_shape_gives_one_line(tmp_path, capsys, spec, shape, message):
    (tmp_path / "model.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(4, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n"
        "def broken():\n"
        "    raise ValueError('no such width')\n"
    )
    rc, out, err = _run(["flops", "--model", spec.format(tmp=tmp_path), "--input-shape", shape], capsys)
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err.strip()), err


@pytest.mark.parametrize(("argv", "message"), [
    (["flops"], "give --model SPEC"),
    (["flops", "--model", f"{SAMPLE_MODEL}:SmallCNN"], "give the model's input shape"),
    (["flops", "--model", f"{SAMPLE_MODEL}:SmallCNN", "--input-shape", "1,3,32,32", "--depth", "-1"], "--depth -1"),
])
def test_usage_errors(capsys, argv, message):
    rc, _, err = _run(argv, capsys)
    assert rc == 1 and err.startswith("UsageError: ") and message in err
