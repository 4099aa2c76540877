"""The training-memory estimate: weights + gradients + optimizer state by dtype, with its assumptions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _fixtures_size import TiedLM, records_of
from ckptboard.core.errors import UsageError
from ckptboard.core.records import OptimizerParam, OptimizerState
from ckptboard.core.size import OptimizerKind, size_tree, training_memory

# TiedLM (see the tree test): 48 trainable + 20 frozen float32 parameter elements (272 B), buffers 8 float32 (32 B)
# and 1 int64 (8 B); the tied head counted once.
WEIGHTS = {"float32": 272 + 32, "int64": 8}


def _state_of(optimizer: torch.optim.Optimizer, key_path: str = "optimizer") -> OptimizerState:
    """The OptimizerState record the reader writes for a real optimizer's state_dict."""
    sd = optimizer.state_dict()
    params = []
    for gi, group in enumerate(sd["param_groups"]):
        for pid in group["params"]:
            state = sd["state"].get(pid, {})
            params.append(OptimizerParam(
                param_id=pid, group_index=gi,
                state_shapes={k: tuple(v.shape) for k, v in state.items()},
                state_dtypes={k: str(v.dtype).removeprefix("torch.") for k, v in state.items()},
            ))
    nbytes = sum(v.numel() * v.element_size() for s in sd["state"].values() for v in s.values())
    return OptimizerState(key_path=key_path, params=params, state_nbytes=nbytes)


def test_adam_is_the_default_without_optimizer_state():
    mem = training_memory(size_tree(records_of(TiedLM())))
    assert mem.optimizer == OptimizerKind.ADAM and mem.optimizer_source == "assumed"
    assert mem.weights == WEIGHTS
    assert mem.gradients == {"float32": 48 * 4}  # trainable elements only, in their dtype
    assert mem.optimizer_state == {"float32": 2 * 4 * 48}  # exp_avg + exp_avg_sq, fp32
    # 304 + 192 + 384 = 880 float32, 8 int64
    assert mem.total_by_dtype == {"float32": 880, "int64": 8}
    assert mem.total_bytes == 888
    assert any("activations" in a for a in mem.assumptions)
    assert not any("unknown trainability" in a for a in mem.assumptions)


@pytest.mark.parametrize(("kind", "state"), [
    ("adamw", {"float32": 2 * 4 * 48}),
    ("sgd-momentum", {"float32": 1 * 4 * 48}),
    ("sgd", {}),
])
def test_optimizer_kinds(kind, state):
    mem = training_memory(size_tree(records_of(TiedLM())), kind)
    assert mem.optimizer_state == state
    assert mem.total_bytes == 304 + 8 + 192 + sum(state.values())


def test_unknown_trainability_counts_as_trainable_and_says_so():
    mem = training_memory(size_tree(records_of(TiedLM(), known_trainable=False)), "adam")
    assert mem.gradients == {"float32": 68 * 4}
    assert mem.optimizer_state == {"float32": 2 * 4 * 68}
    assert any(a.startswith("68 parameter elements of unknown trainability") for a in mem.assumptions)


def test_the_checkpoints_own_optimizer_state_is_used_and_named():
    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.Adam(p for p in model.parameters() if p.requires_grad)
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    states = [_state_of(opt)]
    mem = training_memory(size_tree(records_of(model)), optimizer_states=states)
    assert mem.optimizer == OptimizerKind.CHECKPOINT
    assert mem.optimizer_source == "checkpoint: 'optimizer'"
    # wte 40 + bn weight 4 + bn bias 4 = 48 elements, exp_avg and exp_avg_sq fp32: 384 B, plus 3 fp32 scalar steps
    assert mem.optimizer_state == {"float32": 48 * 4 * 2 + 3 * 4}
    assert any("stored in the checkpoint at 'optimizer'" in a for a in mem.assumptions)
    assert training_memory(size_tree(records_of(model)), "sgd", states).optimizer_state == {}


def test_optimizer_state_without_shapes_falls_back_to_its_total():
    states = [OptimizerState(key_path="opt", params=[OptimizerParam(0, 0)], state_nbytes=1000)]
    mem = training_memory(size_tree(records_of(nn.Linear(2, 2))), optimizer_states=states)
    assert mem.optimizer_state == {"unknown": 1000}


def test_bad_optimizer_choices():
    tree = size_tree(records_of(nn.Linear(2, 2)))
    with pytest.raises(UsageError, match="'lamb' is not one of adam, adamw, sgd-momentum, sgd, checkpoint"):
        training_memory(tree, "lamb")
    with pytest.raises(UsageError, match="checkpoint holds no optimizer state"):
        training_memory(tree, "checkpoint")


def test_to_json_keys():
    data = training_memory(size_tree(records_of(TiedLM()))).to_json()
    assert data == {
        "is_estimate": True, "optimizer": "adam", "optimizer_source": "assumed", "weights_bytes": WEIGHTS,
        "gradients_bytes": {"float32": 192}, "optimizer_state_bytes": {"float32": 384},
        "total_bytes_by_dtype": {"float32": 880, "int64": 8}, "total_bytes": 888,
        "assumptions": data["assumptions"],
    }
    assert all(isinstance(a, str) and a for a in data["assumptions"])
