"""The app's FLOP section: a Hugging Face checkpoint needs no SPEC, the table per module and the ops counted as 0
are shown, a failed forward names the flag to use; ``serve --input-dtype`` travels to the app."""

from __future__ import annotations

import pytest

from _fixtures_app import app_test
from _fixtures_hf import save_hf
from ckptboard.core.errors import UsageError
from ckptboard.dashboard.cli import build_parser
from ckptboard.dashboard.config import AppConfig, config_from_args, parse_app_args
from ckptboard.dashboard.views import View

pytest.importorskip("transformers")


def _open_size_view(root):
    at = app_test(str(root))
    at.session_state["view"] = View.SIZE_FLOPS
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _table(at, column: str):
    """The dataframe with ``column`` (AppTest does not expose a dataframe's key)."""
    return next((d for d in at.dataframe if column in d.value.columns), None)


def test_hugging_face_checkpoint_counts_flops_from_its_config_without_spec(tmp_path):
    save_hf("gpt2", tmp_path / "run" / "gpt2")
    at = _open_size_view(tmp_path)
    assert not at.error, [e.value for e in at.error]
    assert any("GPT2LMHeadModel built from" in c.value and "token ids" in c.value for c in at.caption)
    table = _table(at, "macs").value
    # the whole model: GPT-2 n_layer=1, d=16, 32 tokens (test_hf_flops.test_gpt2_total_by_hand) = 327,680 FLOP
    assert int(table.loc[table["module"] == "", "flops"].iloc[0]) == 327_680
    zero_ops = _table(at, "op").value
    assert {"aten.native_layer_norm", "aten.tanh"} <= set(zero_ops["op"])


def test_failed_forward_names_the_input_dtype_flag(tmp_path):
    save_hf("gpt2", tmp_path / "run" / "gpt2")
    (tmp_path / "emb.py").write_text("from torch import nn\n\ndef make():\n    return nn.Embedding(10, 4)\n")
    at = _open_size_view(tmp_path)
    at.text_input(key="flops_model").input("emb.py:make")
    at.text_input(key="flops_input_shape").input("1,8")  # float32 by default: an embedding wants int64 ids
    at.run()
    assert any(e.value.startswith("FlopCountError:") for e in at.error), [e.value for e in at.error]
    assert any("--input-dtype int64" in i.value for i in at.info)
    at.text_input(key="flops_input_dtype").input("int64")
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert _table(at, "macs") is not None


def test_serve_input_dtype_is_checked_and_round_trips(tmp_path):
    config = AppConfig(root=tmp_path.resolve(), input_shape=(1, 128), input_dtype="int64")
    assert parse_app_args(config.to_argv()) == config
    args = build_parser().parse_args(["serve", str(tmp_path), "--input-shape", "1,16", "--input-dtype", "torch.int64"])
    assert config_from_args(args).input_dtype == "int64"
    bad = build_parser().parse_args(["serve", str(tmp_path), "--input-dtype", "int65"])
    with pytest.raises(UsageError, match="not a torch dtype"):
        config_from_args(bad)
