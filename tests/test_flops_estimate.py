"""The shape-based FLOP estimate: each rule by name, and its label kept apart from counted figures."""

from __future__ import annotations

from torch import nn

from _fixtures_size import TinyGPT, records_of
from ckptboard.core.flop_estimate import estimate_flops


def _by_weight(est) -> dict[str, tuple[str, str, int, str]]:
    return {layer.weight: (layer.kind, layer.rule, layer.flops, layer.per) for layer in est.layers}


def test_linear_conv_and_norm_rules():
    model = nn.Sequential(
        nn.Conv1d(4, 6, 3),
        nn.Conv2d(6, 8, 3, groups=2),
        nn.Conv3d(8, 2, (1, 2, 3)),
        nn.BatchNorm3d(2),
        nn.Linear(5, 7),
    )
    est = estimate_flops(records_of(model))
    assert _by_weight(est) == {
        "0.weight": ("conv1d", "conv-nd", 2 * 4 * 3 * 6, "output position"),  # 2·C_in·k·C_out = 144
        "1.weight": ("conv2d", "conv-nd", 2 * (6 // 2) * 9 * 8, "output position"),  # groups 2: C_in/groups 3 → 432
        "2.weight": ("conv3d", "conv-nd", 2 * 8 * 6 * 2, "output position"),  # kernel 1*2*3 = 6 → 192
        "4.weight": ("linear", "linear-2d", 2 * 5 * 7, "token"),  # 70
    }
    assert est.linear_flops_per_token == 70
    assert est.conv_flops_per_output_position == {"0.weight": 144, "1.weight": 432, "2.weight": 192}
    # biases and the 1-D norm scales have no rule; buffers are not looked at
    assert est.skipped == ["0.bias", "1.bias", "2.bias", "3.weight", "3.bias", "4.bias"]


def test_embeddings_by_exact_name_without_the_model_and_tied_heads_still_multiply():
    est = estimate_flops(records_of(TinyGPT()))
    layers = _by_weight(est)
    assert layers["wte.weight"] == ("embedding", "embedding-name", 0, "lookup")
    assert layers["wpe.weight"] == ("embedding", "embedding-name", 0, "lookup")
    # lm_head.weight is tied to wte.weight but still a 16→32 matmul: 2*16*32 = 1024
    assert layers["lm_head.weight"] == ("linear", "linear-2d", 1024, "token")
    # per block: qkv 2*16*48 = 1536, proj 2*16*16 = 512, mlp 2*16*64*2 = 4096 → 6144; two blocks + head
    assert est.linear_flops_per_token == 2 * 6144 + 1024


def test_an_embedding_not_named_like_one_is_linear_without_the_model_and_embedding_with_it():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    assert _by_weight(estimate_flops(records_of(model)))["0.weight"] == ("linear", "linear-2d", 80, "token")
    with_model = _by_weight(estimate_flops(records_of(model), model))
    assert with_model["0.weight"] == ("embedding", "embedding-type", 0, "lookup")


def test_rnn_and_multihead_attention_weights():
    est = estimate_flops(records_of(nn.LSTM(4, 5, bidirectional=True)))
    layers = _by_weight(est)
    # weight_ih (4H=20, 4): 2*20*4 = 160; weight_hh (20, 5): 200; the reverse direction the same
    assert layers["weight_ih_l0"] == ("linear", "rnn-2d", 160, "token")
    assert layers["weight_hh_l0_reverse"] == ("linear", "rnn-2d", 200, "token")
    assert est.linear_flops_per_token == 2 * (160 + 200)
    mha = _by_weight(estimate_flops(records_of(nn.MultiheadAttention(8, 2))))
    assert mha["in_proj_weight"] == ("linear", "rnn-2d", 2 * 24 * 8, "token")  # (3E, E): 384
    assert mha["out_proj.weight"] == ("linear", "linear-2d", 2 * 8 * 8, "token")


def test_estimate_json_is_labelled_and_carries_the_caveats():
    data = estimate_flops(records_of(nn.Conv2d(1, 1, 1))).to_json()
    assert data["label"].startswith("ESTIMATE from weight shapes alone")
    assert data["unit"] == "FLOP" and data["linear_flops_per_token"] == 0
    assert "total_flops" not in data  # never to be read as a counted figure
    assert any("input size" in c for c in data["caveats"])
    assert data["layers"] == [{
        "weight": "weight", "module": "", "kind": "conv2d", "rule": "conv-nd", "shape": [1, 1, 1, 1], "flops": 2,
        "per": "output position",
    }]
