"""``ckptboard diff``: key alignment across prefixes and renames, the per-tensor numbers, and the ``--json`` contract,
on checkpoints written by transformers, peft, Lightning and torch.save."""

import json
import math

import numpy as np

import pytest
import torch
from torch import nn

from ckptboard.core.diff import MatchRule, diff_checkpoints, strip_known_prefixes, tensor_diff
from ckptboard.dashboard.cli import main

transformers = pytest.importorskip("transformers")


def _gpt2(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=50,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def base_and_finetune(tmp_path_factory):
    """A tiny GPT-2 saved with save_pretrained, then fine-tuned 3 AdamW steps and saved again."""
    root = tmp_path_factory.mktemp("gpt2")
    model = _gpt2()
    model.save_pretrained(root / "base")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(0, 50, (2, 8), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(root / "tuned")
    return root / "base", root / "tuned"


def _diff(capsys, *argv):
    code = main(["diff", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_finetune_vs_base_matches_every_key_and_agrees_with_torch(base_and_finetune):
    base, tuned = base_and_finetune
    report = diff_checkpoints(base, tuned)
    al = report.alignment
    assert not al.only_a and not al.only_b and not al.shape_mismatches
    assert {p.match for p in al.pairs} == {MatchRule.EXACT}
    from safetensors.torch import load_file

    a, b = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    for pair, d in zip(al.pairs, report.diffs):
        x, y = a[pair.a.raw_name].double(), b[pair.b.raw_name].double()
        assert d.diff_norm == pytest.approx(torch.linalg.norm(y - x).item(), rel=1e-12)
        if torch.linalg.norm(x) > 0:
            assert d.rel_change == pytest.approx((torch.linalg.norm(y - x) / torch.linalg.norm(x)).item(), rel=1e-12)
        else:  # GPT-2 starts its biases at zero: no relative change
            assert math.isnan(d.rel_change)
        assert d.sign_flips == int(((x * y) < 0).sum())
        assert d.histogram.total == x.numel()  # every difference is finite
    # Adam moves every trainable weight: nothing is identical except what has no gradient (none in GPT-2).
    assert all(d.diff_norm > 0 for p, d in zip(al.pairs, report.diffs) if p.a.name.endswith(".weight"))


def test_merged_peft_differs_by_exactly_the_lora_product(tmp_path, base_and_finetune):
    peft = pytest.importorskip("peft")
    base, _ = base_and_finetune
    model = transformers.GPT2LMHeadModel.from_pretrained(base)
    torch.manual_seed(2)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False,
                             fan_in_fan_out=True)
    wrapped = peft.get_peft_model(model, config)
    layer = wrapped.base_model.model.transformer.h[0].attn.c_attn
    expected = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).double() * (8 / 4)  # alpha / r
    torch.save(wrapped.state_dict(), tmp_path / "unmerged.pt")
    merged = wrapped.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")

    report = diff_checkpoints(base, tmp_path / "merged")
    changed = {p.a.name: d for p, d in zip(report.alignment.pairs, report.diffs) if d.diff_norm > 0}
    assert sorted(changed) == ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight"]
    # Conv1D stores W as (in, out): the merge adds (B A)^T, whose norm is that of B A.
    assert changed["transformer.h.0.attn.c_attn.weight"].diff_norm == pytest.approx(
        torch.linalg.norm(expected).item(), rel=1e-5)

    # The unmerged PeftModel's own state_dict: base_model.model. prefix, .base_layer infix, adapters only in B.
    report = diff_checkpoints(base, tmp_path / "unmerged.pt")
    rules = {p.a.name: p.match for p in report.alignment.pairs}
    assert rules["transformer.h.0.attn.c_attn.weight"] == MatchRule.PREFIX
    assert all(d.diff_norm == 0 for d in report.diffs)
    # save_pretrained leaves out the head tied to the embedding; torch.save of the state_dict keeps it (tied).
    assert sorted(t.name for t in report.alignment.only_b) == sorted(
        [f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{ab}.default.weight" for i in (0, 1) for ab in "AB"]
        + ["base_model.model.lm_head.weight"])
    assert {t.name: t.tied_to for t in report.alignment.only_b}["base_model.model.lm_head.weight"] == \
        "base_model.model.transformer.wte.weight"
    assert not report.alignment.only_a


class _Named(nn.Module):
    """The same network as ``_sequential()`` with named layers: keys renamed, shapes unchanged."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _sequential():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_lightning_model_prefix_and_renamed_keys_align(tmp_path):
    L = pytest.importorskip("lightning")

    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _sequential()

        def training_step(self, batch, _):
            (x,) = batch
            return self.model(x).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    lit = Lit()
    start = {k: v.clone() for k, v in lit.model.state_dict().items()}
    torch.save(start, tmp_path / "start.pt")
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(lit, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    report = diff_checkpoints(tmp_path / "start.pt", tmp_path / "last.ckpt")
    assert [(p.a.name, p.b.name, p.match) for p in report.alignment.pairs] == [
        (k, f"model.{k}", MatchRule.PREFIX) for k in start]
    assert all(d.diff_norm > 0 for d in report.diffs)  # two SGD steps moved every tensor

    # Same weights under new names: each shape is unique, so the shape pass pairs them in order.
    named = _Named()
    named.load_state_dict({new: start[old] for new, old in zip(named.state_dict(), start)})
    torch.save(named.state_dict(), tmp_path / "named.pt")
    report = diff_checkpoints(tmp_path / "start.pt", tmp_path / "named.pt")
    assert [(p.a.name, p.b.name, p.match) for p in report.alignment.pairs] == [
        ("0.weight", "fc1.weight", MatchRule.SHAPE), ("0.bias", "fc1.bias", MatchRule.SHAPE),
        ("2.weight", "fc2.weight", MatchRule.SHAPE), ("2.bias", "fc2.bias", MatchRule.SHAPE)]
    assert all(d.diff_norm == 0.0 and d.cosine == pytest.approx(1.0) for d in report.diffs)


def test_equal_shapes_under_new_names_stay_unmatched_and_name_clash_is_a_shape_mismatch(tmp_path):
    torch.save({"a.weight": torch.ones(3, 3), "b.weight": torch.ones(3, 3), "head": torch.ones(2, 5)},
               tmp_path / "x.pt")
    torch.save({"p.weight": torch.ones(3, 3), "q.weight": torch.ones(3, 3), "head": torch.ones(2, 6)},
               tmp_path / "y.pt")
    al = diff_checkpoints(tmp_path / "x.pt", tmp_path / "y.pt").alignment
    assert not al.pairs  # two (3, 3) on each side: pairing them by order could be wrong, so it is not done
    assert [(m.a.name, m.b.name) for m in al.shape_mismatches] == [("head", "head")]
    assert [t.name for t in al.only_a] == ["a.weight", "b.weight"]
    assert [t.name for t in al.only_b] == ["p.weight", "q.weight"]


def test_tensor_diff_numbers_by_hand():
    a = torch.tensor([1.0, -2.0, 0.0, 4.0, float("nan")])
    b = torch.tensor([1.0, 2.0, 3.0, 0.0, float("nan")])
    d = tensor_diff(a, b)
    # d = [0, 4, 3, -4, 0] (NaN vs NaN counts as equal); ||d||^2 = 16 + 9 + 16 = 41; ||a||^2 = 1 + 4 + 16 = 21 (NaN
    # left out of the finite sums: a*a of NaN is NaN, so the norms here are NaN and so are the ratios)
    assert d.diff_norm == pytest.approx(math.sqrt(41))
    assert d.sign_flips == 1  # -2 -> 2; 0 -> 3 and 4 -> 0 are not flips
    assert d.max_abs_diff == 4.0 and d.mean_diff == pytest.approx(3 / 5)  # (0 + 4 + 3 - 4 + 0) / 5
    assert d.histogram.total == 5
    finite = tensor_diff(a[:4], b[:4])
    assert finite.rel_change == pytest.approx(math.sqrt(41) / math.sqrt(21))
    assert finite.cosine == pytest.approx((1 - 4 + 0 + 0) / (math.sqrt(21) * math.sqrt(14)))  # <a,b>=-3; ||b||^2=14
    zero = tensor_diff(torch.zeros(3), torch.ones(3))
    assert math.isnan(zero.rel_change) and math.isnan(zero.cosine)  # ||a|| = 0: no relative change


def test_tensor_diff_mixed_dtypes_streams_in_chunks():
    torch.manual_seed(0)
    a = torch.randn(3000, 1000)
    b = (a + 0.01 * torch.randn(3000, 1000)).bfloat16()
    d = tensor_diff(a, b)  # 3M values: several 16 MiB chunks
    exact = torch.linalg.norm(b.double() - a.double()).item()
    assert d.diff_norm == pytest.approx(exact, rel=1e-9)  # float64 sums over 3M values, chunk by chunk vs at once
    assert d.histogram.counts.size <= 64 + 1 and d.histogram.total == a.numel()


def test_strip_known_prefixes():
    assert strip_known_prefixes("base_model.model.model.layers.0.q_proj.base_layer.weight") == "layers.0.q_proj.weight"
    assert strip_known_prefixes("module._orig_mod.fc.weight") == "fc.weight"
    assert strip_known_prefixes("model.") == "model."  # nothing would be left


def test_cli_json_contract(capsys, base_and_finetune):
    base, tuned = base_and_finetune
    code, out, err = _diff(capsys, base, tuned, "--json", "--bins", "8")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert set(data) == {"a", "b", "summary", "tensors", "shape_mismatches", "only_a", "only_b", "notes"}
    assert set(data["summary"]) == {"matched", "exact", "prefix", "shape", "only_a", "only_b", "shape_mismatches",
                                    "identical", "numel", "sign_flips", "rel_change"}
    t = data["tensors"][0]
    assert set(t) == {"a", "b", "match", "kind", "shape", "dtype_a", "dtype_b", "numel", "norm_a", "norm_b",
                      "diff_norm", "rel_change", "cosine", "sign_flips", "sign_flip_fraction", "max_abs_diff",
                      "mean_diff", "histogram"}
    assert set(t["histogram"]) == {"lo", "hi", "counts"} and len(t["histogram"]["counts"]) <= 9
    assert data["summary"]["matched"] == len(data["tensors"]) == data["summary"]["exact"]


def test_cli_table_and_bad_input(capsys, tmp_path, base_and_finetune):
    base, tuned = base_and_finetune
    code, out, _ = _diff(capsys, base, tuned, "--top", "3")
    assert code == 0 and "largest relative changes, parameters first (3 of" in out
    code, out, err = _diff(capsys, base, tmp_path / "nope.pt")
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"UsageError: {tmp_path / 'nope.pt'}: no such file or folder; pass two checkpoint "
                                "files or Hugging Face folders"]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    code, out, err = _diff(capsys, base, tmp_path / "junk.pt")
    assert code == 1 and err.startswith("NotACheckpointError: ") and len(err.splitlines()) == 1
    code, out, err = _diff(capsys, base, tuned, "--group-a", "nope")
    assert code == 1 and "no group 'nope' for --group-a" in err


def test_numba_and_torch_paths_agree():
    from ckptboard.core.diff import _cpu_kernels, _sums_numba, _sums_torch

    torch.manual_seed(0)
    a = torch.randn(300, 70)
    b = a + 0.1 * torch.randn(300, 70)
    a[0, 0], b[0, 1], a[1, 1], b[1, 1] = float("inf"), float("nan"), float("nan"), float("nan")
    fast = _sums_numba(a, b, _cpu_kernels())
    slow = _sums_torch(a, b, torch.device("cpu"))
    assert fast[5:8] == slow[5:8]  # max |d|, flips, finite d: exact
    assert np.array_equal(fast[8], slow[8])  # the same histogram codes
    for x, y in zip(fast[:5], slow[:5]):
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-12)
