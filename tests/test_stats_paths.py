"""tensor_stats against NumPy float64 references: over real checkpoints, chunked, strided, torch and CUDA paths."""

import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ckptboard.core import stats
from ckptboard.core.histogram import Histogram
from ckptboard.core.schema import PERCENTILES
from ckptboard.core.stats import iter_chunks, tensor_stats


def _ulp_bf16(v: np.ndarray) -> np.ndarray:
    """One bf16 ulp at |v|: 2**(floor(log2|v|) - 7), and the subnormal bin width below 2**-126."""
    v = np.maximum(np.abs(v), 2.0**-126)
    return np.exp2(np.floor(np.log2(v)) - 7)


def _check_against_numpy(s, x: torch.Tensor) -> None:
    ref = x.detach().double().reshape(-1).numpy()
    ref = ref[np.isfinite(ref)]
    assert s.mean == pytest.approx(ref.mean(), rel=1e-12, abs=1e-15)
    assert s.std == pytest.approx(ref.std(), rel=1e-9, abs=1e-15)
    assert s.abs_mean == pytest.approx(np.abs(ref).mean(), rel=1e-12)
    assert s.norm == pytest.approx(np.sqrt(np.dot(ref, ref)), rel=1e-12)
    assert (s.min, s.max, s.zeros) == (ref.min(), ref.max(), int(np.sum(ref == 0)))
    exact = np.percentile(ref, PERCENTILES)
    got = np.array(list(s.percentiles.values()))
    if s.percentiles_exact:
        np.testing.assert_allclose(got, exact, rtol=1e-12, atol=1e-300)
    else:  # each interpolated order statistic is off by less than one bf16 ulp of itself
        srt = np.sort(ref)
        rank = np.asarray(PERCENTILES) / 100 * (ref.size - 1)
        bound = np.maximum(_ulp_bf16(srt[np.floor(rank).astype(int)]), _ulp_bf16(srt[np.ceil(rank).astype(int)]))
        assert np.all(np.abs(got - exact) < bound)
    assert s.histogram.total == ref.size


class _TinyTransformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(300, 32)
        self.attn = torch.nn.MultiheadAttention(32, 4)
        self.norm = torch.nn.LayerNorm(32)
        self.mlp = torch.nn.Linear(32, 256)
        self.bn = torch.nn.BatchNorm1d(256)


def test_every_tensor_of_a_mmap_loaded_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(_TinyTransformer().state_dict(), path)
    state = torch.load(path, mmap=True, weights_only=True)
    for name, t in state.items():
        s = tensor_stats(t)
        assert s.numel == t.numel(), name
        _check_against_numpy(s, t)


def test_lazy_safetensors_bf16_and_fp16(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "model.safetensors"
    layer = torch.nn.Linear(96, 64)
    save_file({"w16": layer.weight.detach().half(), "wbf": layer.weight.detach().bfloat16()}, path)
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            s = tensor_stats(t)
            _check_against_numpy(s, t)
            assert s.percentiles_exact == (t.dtype == torch.bfloat16)


def test_histogram_estimate_stays_within_one_bf16_ulp():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal(200_000, dtype=np.float32) * 0.02)
    s = tensor_stats(x)
    assert not s.percentiles_exact
    _check_against_numpy(s, x)


def test_chunked_pass_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((64, 300), dtype=np.float32))
    x[5, 7] = float("nan")  # one chunk takes the exact (branching) kernel, the others the fast one
    whole = tensor_stats(x, resolution=None)
    monkeypatch.setattr(stats, "CHUNK_BYTES", 4 * 1000)  # 1000 fp32 values: 3 rows per chunk
    chunked = tensor_stats(x, resolution=None)
    assert chunked.as_row() == pytest.approx(whole.as_row(), rel=1e-12, nan_ok=True)
    assert chunked.histogram.counts.tolist() == whole.histogram.counts.tolist()


def test_nan_after_the_first_block_of_a_chunk():
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.standard_normal(40_000, dtype=np.float32))
    x[20_000] = float("nan")  # the kernel's first 16,384-value block is counted fast, the rest exactly
    s = tensor_stats(x)
    assert s.nans == 1
    _check_against_numpy(s, x)


def test_strided_tensor_equals_its_contiguous_copy(monkeypatch):
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((300, 70), dtype=np.float32)).t()  # a transposed view
    monkeypatch.setattr(stats, "CHUNK_BYTES", 4 * 50)  # rows of 300 > 50 values: split inside rows
    assert tensor_stats(x).as_row() == pytest.approx(tensor_stats(x.contiguous()).as_row(), rel=1e-12)


def test_blocks_cover_every_element_once():
    seen = torch.zeros(3, 5, 7, dtype=torch.int64)
    for (piece,) in iter_chunks(torch.arange(105).reshape(3, 5, 7), chunk_bytes=8 * 4):  # 4 int64 per chunk
        assert piece.numel() <= 4
        seen.view(-1)[piece] += 1
    assert seen.eq(1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int32])
def test_torch_reduction_equals_numba(monkeypatch, dtype):
    # The CUDA path's torch reduction, run on CPU (what happens where numba is not installed).
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal(10_000) * 100).to(dtype)
    if dtype.is_floating_point:
        x[3], x[4] = float("nan"), -float("inf")
    expected = tensor_stats(x)
    monkeypatch.setattr(stats, "_cpu_kernels", lambda: None)
    got = tensor_stats(x)
    assert got.as_row() == pytest.approx(expected.as_row(), rel=1e-12, nan_ok=True)
    assert got.percentiles_exact == expected.percentiles_exact
    assert got.histogram.counts.tolist() == expected.histogram.counts.tolist()


def test_fp32_holding_bf16_values_gets_exact_percentiles():
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.standard_normal(20_000, dtype=np.float32)).bfloat16().float()
    s = tensor_stats(x)
    assert s.percentiles_exact
    _check_against_numpy(s, x)


def test_histogram_is_coarsened_to_the_resolution():
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.standard_normal(50_000, dtype=np.float32))
    s = tensor_stats(x, resolution=64)
    full = tensor_stats(x, resolution=None).histogram
    width = (s.max - s.min) / 64
    assert s.histogram.counts.size <= 65 < full.counts.size
    assert s.histogram.total == full.total == 50_000
    # a merged bin spans at most one cell plus its last bf16 bin (2**(2 - 7) wide for 4 <= |v| < 8)
    assert np.all(s.histogram.hi - s.histogram.lo <= width + 2**-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cuda_equals_cpu(dtype, monkeypatch):
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.standard_normal((300, 1000), dtype=np.float32)).to(dtype)
    x[1, 2] = float("nan")
    monkeypatch.setattr(stats, "GPU_CHUNK_BYTES", 64 * 1024)  # many chunks through the staging buffers
    cpu = tensor_stats(x)
    for source in (x, x.cuda()):
        gpu = tensor_stats(source, device="cuda")
        assert gpu.as_row() == pytest.approx(cpu.as_row(), rel=1e-9, nan_ok=True)
        assert gpu.histogram.counts.tolist() == cpu.histogram.counts.tolist()


def test_histogram_of_a_tensor_merges_with_another_step():
    a = tensor_stats(torch.tensor([1.0, 2.0, 2.0]), resolution=None).histogram
    b = tensor_stats(torch.tensor([2.0, 3.0]), resolution=None).histogram
    merged = a.merge(b)
    assert merged.lo.tolist() == [1.0, 2.0, 3.0]
    assert merged.counts.tolist() == [1, 3, 1]
    assert isinstance(merged, Histogram) and math.isclose(merged.hi[0], 1 + 2**-7)  # one bf16 ulp at 1
