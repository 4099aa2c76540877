"""Exact verdicts from a Hugging Face ``config.json``: the model built on meta, no --model, no network."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from _fixtures_hf import HF_ZOO, hf_truth, save_hf
from ckptboard.core.classify import Rule, classify
from ckptboard.core.errors import ModelSpecError
from ckptboard.core.hf_model import HF_EXTRA_HINT, build_from_config, model_for_checkpoint
from ckptboard.core.model_spec import load_model, parse_spec
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import TensorKind

pytest.importorskip("transformers")


def _verdicts(ckpt) -> dict[str, tuple[str, str]]:
    return {i.name: (str(i.kind), str(i.trainable)) for i in ckpt.tensors}


@pytest.mark.parametrize("name", sorted(HF_ZOO))
def test_every_architecture_is_classified_exactly_from_its_config(tmp_path, name):
    model = save_hf(name, tmp_path / name)
    with open_checkpoint(tmp_path / name) as ckpt:
        result = classify(ckpt)
        assert _verdicts(ckpt) == {n: v for n, v in hf_truth(model).items() if n in _verdicts(ckpt)}
        assert {i.source for i in ckpt.tensors} == {Rule.MODEL_CONFIG}
    assert result.model_source == f"config.json ({tmp_path / name / 'config.json'})"
    assert result.report.unexpected_keys == [] and result.report.missing_keys == []


def test_gpt2_report_names_the_tied_head_and_the_class(tmp_path):
    save_hf("gpt2", tmp_path / "gpt2")
    with open_checkpoint(tmp_path / "gpt2") as ckpt:
        result = classify(ckpt)
        notes = list(ckpt.notes)
    # n_layer=1: wte, wpe, ln_f (2) + per block ln_1 (2), c_attn (2), c_proj (2), ln_2 (2), mlp c_fc (2), c_proj (2)
    # = 2 + 2 + 12 = 16 saved tensors; lm_head.weight is tied to wte and saved once.
    assert result.report.matched == 16
    assert result.report.tied_keys == ["lm_head.weight = transformer.wte.weight"]
    assert any("GPT2LMHeadModel built from" in n for n in notes)
    assert result.counts() == {"buffer": 0, "trainable": 16, "frozen": 0, "unknown": 0}


def test_bart_final_logits_bias_is_a_buffer_with_and_without_transformers(tmp_path, monkeypatch):
    save_hf("bart", tmp_path / "bart")
    with open_checkpoint(tmp_path / "bart") as ckpt:
        classify(ckpt)
        by_config = {i.name: (i.kind, i.source) for i in ckpt.tensors}["final_logits_bias"]
    assert by_config == (TensorKind.BUFFER, Rule.MODEL_CONFIG)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with open_checkpoint(tmp_path / "bart") as ckpt:
        result = classify(ckpt)
        by_rule = {i.name: (i.kind, i.source) for i in ckpt.tensors}["final_logits_bias"]
        notes = list(ckpt.notes)
    assert by_rule == (TensorKind.BUFFER, Rule.FINAL_LOGITS_BIAS)
    assert result.report is None and result.model_source is None
    assert notes == [f"config.json found; {HF_EXTRA_HINT}"]


def test_detr_frozen_batchnorm_by_config_and_by_rule_agree(tmp_path):
    model = save_hf("detr", tmp_path / "detr")
    truth = hf_truth(model)
    with open_checkpoint(tmp_path / "detr") as ckpt:
        classify(ckpt, from_config=False)
        kinds = {i.name: str(i.kind) for i in ckpt.tensors}
        frozen_bn = sorted(i.name for i in ckpt.tensors if i.source == Rule.FROZEN_BATCHNORM)
    assert kinds == {n: truth[n][0] for n in kinds}
    # ResNet backbone, depths [1, 1] basic blocks: embedder norm, 2 stage-1 block norms, 2 stage-2 block norms and
    # stage 2's shortcut norm = 6 DetrFrozenBatchNorm2d, weight and bias each = 12.
    assert len(frozen_bn) == 12


def test_a_config_transformers_does_not_know_falls_back_to_the_rules(tmp_path):
    save_hf("gpt2", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model_type"], config["architectures"] = "not-a-model", ["NotAModel"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with open_checkpoint(tmp_path / "m") as ckpt:
        result = classify(ckpt)
        sources = {i.source for i in ckpt.tensors}
    assert result.report is None
    assert sources == {Rule.FLOAT_PARAMETER}
    assert any(n.startswith("config.json not used:") and "'not-a-model' is unknown" in n for n in ckpt.notes)


def test_custom_code_runs_only_with_trust(tmp_path):
    save_hf("gpt2", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["architectures"] = ["MyGPT"]
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_my.MyGPT"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with open_checkpoint(tmp_path / "m") as ckpt:
        built = model_for_checkpoint(ckpt)
    assert built.model is None
    assert "custom code named by auto_map" in built.notes[0] and "--trust" in built.notes[0]


def test_a_non_transformers_config_json_is_left_alone(tmp_path):
    torch.save({"w": torch.zeros(2, 2)}, tmp_path / "ckpt.pt")
    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.1, "epochs": 3}))
    with open_checkpoint(tmp_path / "ckpt.pt") as ckpt:
        result = classify(ckpt)
    assert result.model_source is None and ckpt.notes == []


def test_model_spec_hf_builds_from_a_folder_or_a_json(tmp_path):
    save_hf("llama", tmp_path / "llama")
    assert parse_spec(f"hf:{tmp_path / 'llama'}") == ("hf", str(tmp_path / "llama"))
    on_meta = load_model(f"hf:{tmp_path / 'llama' / 'config.json'}")
    assert type(on_meta).__name__ == "LlamaForCausalLM" and next(on_meta.parameters()).is_meta
    on_cpu = load_model(f"hf:{tmp_path / 'llama'}", device="cpu")
    assert next(on_cpu.parameters()).device.type == "cpu"
    with pytest.raises(ModelSpecError, match="expected hf:CONFIG_DIR_OR_JSON"):
        load_model(f"hf:{tmp_path / 'nothing'}")


def test_build_from_config_without_architectures_picks_the_best_auto_class(tmp_path):
    save_hf("t5", tmp_path / "t5")
    config = json.loads((tmp_path / "t5" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "t5" / "config.json").write_text(json.dumps(config))
    with open_checkpoint(tmp_path / "t5") as ckpt:
        names = [i.name for i in ckpt.tensors]
    model, arch = build_from_config(tmp_path / "t5", names=names)
    assert arch == "T5ForConditionalGeneration"  # has lm_head.weight; T5Model has not
    assert next(model.parameters()).is_meta


def test_the_hub_is_never_asked(tmp_path, monkeypatch):
    """Building from a config sets HF_HUB_OFFLINE while it runs and restores the environment afterwards."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = []
    import transformers

    original = transformers.GPT2LMHeadModel.__init__

    def spy(self, config, *a, **k):
        seen.append(__import__("os").environ.get("HF_HUB_OFFLINE"))
        original(self, config, *a, **k)

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "__init__", spy)
    save_hf("gpt2", tmp_path / "g")
    seen.clear()
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    build_from_config(tmp_path / "g")
    assert seen == ["1"] and "HF_HUB_OFFLINE" not in __import__("os").environ
    assert constants.HF_HUB_OFFLINE == before  # the caller's process keeps its own setting


def test_inspect_on_a_hugging_face_folder(tmp_path, capsys, monkeypatch):
    from ckptboard.dashboard.cli import main

    save_hf("bart", tmp_path / "bart")
    assert main(["inspect", str(tmp_path / "bart"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model_source"] == f"config.json ({tmp_path / 'bart' / 'config.json'})"
    assert {t["source"] for t in data["tensors"]} == {"model:config.json"}
    assert data["model_report"]["missing_keys"] == [] and data["model_report"]["unexpected_keys"] == []
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if transformers were not installed
    assert main(["inspect", str(tmp_path / "bart")]) == 0
    out = capsys.readouterr().out
    assert f"note: config.json found; {HF_EXTRA_HINT}" in out.splitlines()
    assert "classified by: the rules" in out


def test_peft_adapter_names_its_base_config(tmp_path):
    """A PEFT layout puts adapter_config.json's base_model_name_or_path in the checkpoint's metadata; the base
    model's config.json is named, and the adapter's tensors are not classified by the base model."""
    peft = pytest.importorskip("peft")
    base = save_hf("gpt2", tmp_path / "base")
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    lora.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    lora.save_pretrained(tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    with open_checkpoint(tmp_path / "adapter" / "adapter_model.safetensors") as ckpt:
        ckpt.metadata["base_model_name_or_path"] = adapter_config["base_model_name_or_path"]
        built = model_for_checkpoint(ckpt)
    assert built.model is None and built.config_path == tmp_path / "base" / "config.json"
    assert built.notes == [
        f"PEFT adapter: base model config {tmp_path / 'base' / 'config.json'} (gpt2); the adapter's tensors are "
        "classified by the adapter layout, not by the base model"
    ]


def test_config_model_takes_trainable_from_the_optimizer_where_it_lines_up():
    """A fine-tune that froze the embeddings: the config only knows requires_grad=True, the optimizer knows better."""
    from _fixtures_hf import build_hf
    from _fixtures_zoo import group_from_module, optimizer_record, train_one_step

    from ckptboard.core.classify import classify_tensors

    model = build_hf("gpt2")
    model.transformer.wte.requires_grad_(False)
    model.transformer.wpe.requires_grad_(False)
    opt = train_one_step(model, lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad]))
    group = group_from_module(model)
    on_meta, _ = _on_meta(model)
    result = classify_tensors([group], [optimizer_record(opt.state_dict())], on_meta, model_rule=Rule.MODEL_CONFIG)
    got = {i.name: (i.trainable, i.source) for i in group.tensors}
    assert got["transformer.wte.weight"] == ("false", Rule.MODEL_CONFIG)
    assert got["transformer.h.0.attn.c_attn.weight"] == ("true", Rule.MODEL_CONFIG)
    assert result.report.trainable_disagreements == []  # the config's default is not a disagreement


def _on_meta(model):
    """The same architecture built on meta from the model's own config."""
    with torch.device("meta"):
        return type(model)(model.config), type(model).__name__


def test_summarize_recomputes_a_checkpoint_when_its_config_json_changes(tmp_path):
    from ckptboard.core.summarize import plan, summarize

    save_hf("gpt2", tmp_path / "run" / "gpt2")
    summarize(tmp_path)
    assert plan(tmp_path).tasks == []  # cached
    config_path = tmp_path / "run" / "gpt2" / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["GPT2Model"]
    config_path.write_text(json.dumps(config, indent=1))
    assert len(plan(tmp_path).tasks) == 1  # the config decides the verdicts: a new config, a new key


def test_a_transformers_class_as_factory_points_at_hf_specs():
    with pytest.raises(ModelSpecError, match=r"GPT2LMHeadModel.*--model hf:CONFIG_DIR_OR_JSON"):
        load_model("transformers:GPT2LMHeadModel")
