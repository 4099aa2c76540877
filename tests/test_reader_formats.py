"""The reader on every format: listing without data, then each tensor loaded equal to the one saved."""

from __future__ import annotations

import pytest
import torch
from _fixtures_ckpt import TinyNet, odd_tensors, save, trained_net, write_hf_folder
from safetensors.torch import save_file
from torch import nn

from ckptboard.core.errors import UnsafeCheckpointError, UsageError
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.records import CheckpointFormat, StepSource


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality, for quantized and float8 tensors too (torch.equal has no float8 kernel)."""
    if a.is_quantized:
        return b.is_quantized and torch.equal(a.int_repr(), b.int_repr()) and torch.equal(a.dequantize(), b.dequantize())
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point and a.dtype.itemsize == 1:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_every_dtype_and_layout_round_trips(tmp_path, legacy):
    saved = odd_tensors()
    path = save(saved, tmp_path / "odd.pt", legacy=legacy)
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == (CheckpointFormat.TORCH_LEGACY if legacy else CheckpointFormat.TORCH_ZIP)
        assert [t.name for t in ckpt.tensors] == list(saved)
        for info in ckpt.tensors:
            original = saved[info.name]
            assert info.shape == tuple(original.shape)
            assert info.dtype == str(original.dtype).removeprefix("torch.")
            assert info.numel == original.numel()
            assert info.nbytes == original.numel() * original.element_size()
            assert _same(ckpt.load(info), original), info.name


def test_dtype_names_and_sizes(tmp_path):
    path = save(odd_tensors(), tmp_path / "odd.pt")
    with open_checkpoint(path) as ckpt:
        by_name = {t.name: t for t in ckpt.tensors}
    assert by_name["bf16"].dtype == "bfloat16" and by_name["bf16"].nbytes == 48  # 4*6 elements * 2 bytes
    assert by_name["complex"].dtype == "complex64" and by_name["complex"].nbytes == 192  # 24 * 8
    assert by_name["q_tensor"].dtype == "quint8" and by_name["q_tensor"].nbytes == 24  # 24 * 1
    assert by_name["fp8"].dtype == "float8_e4m3fn"
    assert by_name["scalar"].shape == () and by_name["scalar"].numel == 1
    assert by_name["empty"].numel == 0 and by_name["empty"].nbytes == 0
    # a view of base's storage at element 1 is not a tie (other offset and shape); transposed has offset 0 but
    # another shape
    assert by_name["strided"].storage_key == by_name["base"].storage_key
    assert by_name["strided"].storage_offset == 1
    assert by_name["strided"].tied_to is None and by_name["transposed"].tied_to is None


def test_zip_load_writes_stay_private(tmp_path):
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    path = save({"w": weight}, tmp_path / "w.pt")
    before = path.read_bytes()
    with open_checkpoint(path) as ckpt:
        loaded = ckpt.load(ckpt.tensors[0])
        loaded.add_(1)  # the bytes were read into memory of their own: the file never changes
        again = ckpt.load(ckpt.tensors[0])
    assert torch.equal(again, weight)
    assert path.read_bytes() == before


def test_safetensors_lists_from_the_header_and_loads_each_tensor(tmp_path):
    saved = {k: v for k, v in odd_tensors().items() if k in ("fp16", "bf16", "int8", "bool", "scalar", "fp8", "base")}
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in saved.items()}, path, metadata={"step": "40"})
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == CheckpointFormat.SAFETENSORS
        assert sorted(t.name for t in ckpt.tensors) == sorted(saved)
        assert ckpt.metadata == {"step": "40"}
        assert (ckpt.step, ckpt.step_source) == (40, StepSource.STEP)
        for info in ckpt.tensors:
            assert _same(ckpt.load(info), saved[info.name]), info.name


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_hf_sharded_folder_is_one_checkpoint(tmp_path, kind):
    net, _ = trained_net()
    state = {k: v for k, v in net.state_dict().items() if k != "head.weight"}  # HF drops tied copies
    folder = write_hf_folder(tmp_path / "checkpoint-500", state, shards=2, kind=kind)
    with open_checkpoint(folder) as ckpt:
        assert ckpt.format == CheckpointFormat.HF_SHARDED
        assert [g.name for g in ckpt.groups] == [""]
        assert sorted(t.name for t in ckpt.tensors) == sorted(state)
        assert (ckpt.step, ckpt.step_source) == (500, StepSource.FILENAME)
        assert ckpt.metadata["total_size"] == sum(v.numel() * v.element_size() for v in state.values())
        for info in ckpt.tensors:
            assert torch.equal(ckpt.load(info), state[info.name])
            assert info.storage_key.startswith(("model-", "pytorch_model-"))


def test_hf_trainer_state_gives_the_step(tmp_path):
    folder = write_hf_folder(tmp_path / "last", {"w": torch.ones(2)}, shards=1)
    (folder / "trainer_state.json").write_text('{"global_step": 812, "epoch": 2.0}')
    with open_checkpoint(folder) as ckpt:
        assert (ckpt.step, ckpt.step_source) == (812, StepSource.GLOBAL_STEP)


def test_pickled_module_needs_trust_and_then_exposes_module(tmp_path):
    net, _ = trained_net()
    path = save(net, tmp_path / "model.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"model\.pt: .*TinyNet.*--trust"):
        open_checkpoint(path)
    with open_checkpoint(path, trust=True) as ckpt:
        assert ckpt.format == CheckpointFormat.PICKLED_MODULE
        assert isinstance(ckpt.module, TinyNet)
        assert [t.name for t in ckpt.tensors] == list(net.state_dict())
        head = next(t for t in ckpt.tensors if t.name == "head.weight")
        assert head.tied_to == "embed.weight"
        assert torch.equal(ckpt.load(head), net.embed.weight)


def test_torchscript_needs_trust(tmp_path):
    torch.manual_seed(0)
    scripted = torch.jit.script(nn.Linear(3, 2))
    path = tmp_path / "scripted.pt"
    scripted.save(str(path))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript.*--trust"):
        open_checkpoint(path)
    with open_checkpoint(path, trust=True) as ckpt:
        assert ckpt.format == CheckpointFormat.TORCHSCRIPT
        assert ckpt.module is not None
        assert {t.name: t.shape for t in ckpt.tensors} == {"weight": (2, 3), "bias": (2,)}
        assert torch.equal(ckpt.load(ckpt.tensors[0]), scripted.weight)


def test_trust_keeps_the_safe_path_for_safe_files(tmp_path):
    path = save({"w": torch.ones(3)}, tmp_path / "w.pt")
    with open_checkpoint(path, trust=True) as ckpt:
        assert ckpt.module is None and not any("trusted" in n for n in ckpt.notes)


def test_device_is_validated_before_any_file_is_opened(tmp_path):
    with pytest.raises(UsageError, match="not a torch device"):
        open_checkpoint(tmp_path / "missing.pt", device="gpu7")
    with pytest.raises(UsageError, match="only cpu and cuda"):
        open_checkpoint(tmp_path / "missing.pt", device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            open_checkpoint(tmp_path / "missing.pt", device="cuda")


def test_load_after_close_is_refused(tmp_path):
    path = save({"w": torch.ones(3)}, tmp_path / "w.pt")
    ckpt = open_checkpoint(path)
    info = ckpt.tensors[0]
    ckpt.close()
    with pytest.raises(UsageError, match="closed"):
        ckpt.load(info)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_load_on_cuda(tmp_path, legacy):
    saved = {k: v for k, v in odd_tensors().items() if not v.is_quantized}
    path = save(saved, tmp_path / "odd.pt", legacy=legacy)
    with open_checkpoint(path, device="cuda") as ckpt:
        for info in ckpt.tensors:
            tensor = ckpt.load(info)
            assert tensor.device.type == "cuda"
            assert _same(tensor.cpu(), saved[info.name]), info.name


def test_hf_single_file_folder_beside_config_json(tmp_path):
    folder = tmp_path / "checkpoint-40"
    folder.mkdir()
    save_file({"w": torch.arange(4.0)}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    with open_checkpoint(folder) as ckpt:
        assert ckpt.format == CheckpointFormat.HF_SHARDED
        assert [t.name for t in ckpt.tensors] == ["w"] and ckpt.tensors[0].storage_key == "model.safetensors:w"
        assert (ckpt.step, ckpt.step_source) == (40, StepSource.FILENAME)


def test_legacy_pickled_module_needs_trust(tmp_path):
    net, _ = trained_net()
    path = save(net, tmp_path / "model_legacy.pt", legacy=True)
    with pytest.raises(UnsafeCheckpointError, match=r"model_legacy\.pt: .*TinyNet.*--trust"):
        open_checkpoint(path)
    with open_checkpoint(path, trust=True) as ckpt:
        assert isinstance(ckpt.module, TinyNet)
        assert torch.equal(ckpt.load(ckpt.tensors[0]), net.embed.weight)
