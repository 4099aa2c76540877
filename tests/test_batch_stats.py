"""The batched small-tensor path gives exactly what the per-tensor path gives: statistics, histograms, update
statistics, the rows of a real checkpoint series, and the bytes read together from a safetensors file."""

from __future__ import annotations

import math
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from ckptboard.core import rows as rows_module
from ckptboard.core.arrow_rows import table_from_rows
from ckptboard.core.batch_stats import batchable, small_stats, small_updates
from ckptboard.core.classify import classify
from ckptboard.core.errors import CorruptCheckpointError
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.rows import RowSource, checkpoint_rows
from ckptboard.core.schema import TableName, arrow_schema
from ckptboard.core.stats import EXACT_PERCENTILE_NUMEL, tensor_stats
from ckptboard.core.updates import update_stats

_NAN, _INF = float("nan"), float("inf")


def _cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cases = {f"random {n}": torch.randn(n, generator=g) for n in (1, 7, 8, 9, 127, 128, 129, 136, 1000, 4095)}
    cases |= {
        "random 4096 (the largest batched)": torch.randn(64, 64, generator=g),
        "0-d": torch.tensor(3.5),
        "empty": torch.zeros(3, 0),
        "constant": torch.full((100,), 0.1),
        "NaN/Inf mixed": torch.tensor([_NAN, 1.0, _INF, -_INF, 0.0, -0.0, 2.5, -1.0]),
        "all NaN": torch.full((5,), _NAN),
        "all +Inf": torch.full((4,), _INF),
        "signed zeros": torch.tensor([-0.0, 0.0, -0.0]),
        "int64": torch.arange(-5, 10, dtype=torch.int64),
        "int8": torch.randint(-100, 100, (64,), generator=g, dtype=torch.int8),
        "uint8": torch.randint(0, 255, (33,), generator=g, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True, True]),
        "bf16": torch.randn(300, generator=g).bfloat16(),
        "fp16": torch.randn(300, generator=g).half(),
        "fp64 beyond fp32's range": torch.randn(50, generator=g, dtype=torch.float64) * 1e300,
        "subnormal fp32": torch.randn(2000, generator=g) * 1e-40,
        "complex64 (magnitudes)": torch.randn(4, 8, generator=g, dtype=torch.complex64),
        "large offset": 1e6 + torch.randn(500, generator=g, dtype=torch.float64),
    }
    return cases


_CASES = _cases()


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("resolution", [512, None])
def test_batched_statistics_equal_the_per_tensor_path_exactly(resolution):
    tensors = list(_CASES.values())
    batch = small_stats(tensors, resolution=resolution)
    for i, (label, t) in enumerate(_CASES.items()):
        ref, got = tensor_stats(t, resolution=resolution), batch.tensor_stats(i)
        for name in ("numel", "mean", "std", "min", "max", "abs_mean", "norm", "zeros", "nans", "posinfs", "neginfs",
                     "percentiles_exact"):
            assert _same(getattr(ref, name), getattr(got, name)), (label, name, getattr(ref, name), getattr(got, name))
        np.testing.assert_array_equal(list(got.percentiles.values()), list(ref.percentiles.values()), err_msg=label)
        assert list(got.percentiles) == list(ref.percentiles)
        for part in ("lo", "hi", "counts"):
            np.testing.assert_array_equal(getattr(got.histogram, part), getattr(ref.histogram, part), err_msg=label)


def test_batched_rows_are_the_per_tensor_rows():
    tensors = list(_CASES.values())
    for t, row in zip(tensors, small_stats(tensors).rows()):
        ref = tensor_stats(t).as_row()
        assert list(row) == list(ref)
        assert all(_same(row[k], ref[k]) for k in ref), t


def test_the_pairwise_sums_match_numpy_bit_for_bit_at_every_size():
    # the mean of zero-centred data is a difference of nearly equal sums: any other summation order shows in it
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(n, generator=g, dtype=torch.float64) for n in range(1, EXACT_PERCENTILE_NUMEL + 1, 37)]
    tensors = [t - t.mean() for t in tensors]
    batch = small_stats(tensors)
    for i, t in enumerate(tensors):
        ref = tensor_stats(t)
        assert (batch.tensor_stats(i).mean, batch.tensor_stats(i).std, batch.tensor_stats(i).norm) == (
            ref.mean, ref.std, ref.norm), t.numel()


def test_batched_update_statistics_match_update_stats():
    g = torch.Generator().manual_seed(2)
    triples = []
    for t in _CASES.values():
        if t.is_floating_point() and not t.is_complex():
            prev = t + 0.01 * torch.randn(t.shape, generator=g).to(t.dtype)
            triples += [(t, prev, None), (t, prev, prev * 2), (t, t.clone(), t.clone())]
        else:
            triples.append((t, t.clone(), None))
    for (cur, prev, first), row in zip(triples, small_updates(triples)):
        ref = update_stats(prev, cur, first).as_row()
        assert list(row) == list(ref)
        for key, value in ref.items():
            # float64 sums in element order here, the per-tensor kernel's vectorised order there: rounding only
            assert _same(row[key], value) or row[key] == pytest.approx(value, rel=1e-12), (cur.dtype, key)


def test_identical_tensors_have_update_norm_exactly_zero_and_no_first_gives_nan():
    t = torch.tensor([1.0, _NAN, _INF, -2.0])
    (row,) = small_updates([(t, t.clone(), None)])
    assert row["update_norm"] == 0.0  # equal values (NaN with NaN, Inf with Inf) differ by 0
    assert math.isnan(row["update_ratio"])  # ||prev|| sums NaN**2 and Inf**2: no ratio
    assert math.isnan(row["dist_from_first"]) and math.isnan(row["rel_dist_from_first"])


def test_batchable_takes_only_small_dense_cpu_tensors():
    assert batchable(torch.zeros(EXACT_PERCENTILE_NUMEL))
    assert not batchable(torch.zeros(EXACT_PERCENTILE_NUMEL + 1))
    assert not batchable(torch.eye(3).to_sparse())
    assert not batchable(torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.quint8))


def test_load_many_reads_what_load_reads(tmp_path):
    # a 3-byte bool tensor first leaves the following fp32 data off its 4-byte alignment
    g = torch.Generator().manual_seed(3)
    state = {
        "a.flag": torch.tensor([True, False, True]),
        "a.weight": torch.randn(5, 3, generator=g),
        "b.bias": torch.randn(7, generator=g).bfloat16(),
        "b.empty": torch.zeros(0),
        "c.big": torch.randn(40_000, generator=g),  # 160 kB: more than the gap one read spans
        "c.steps": torch.tensor(12, dtype=torch.int64),
    }
    save_file(state, str(tmp_path / "m.safetensors"))
    with open_checkpoint(tmp_path / "m.safetensors") as ckpt:
        infos = ckpt.tensors
        together = ckpt.load_many(infos)
        for info, tensor in zip(infos, together):
            alone = ckpt.load(info)
            assert tensor.dtype == alone.dtype and tensor.shape == alone.shape
            assert torch.equal(tensor, alone), info.name


def _torch_zip_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    big = torch.randn(100, 50, generator=g)
    state = {f"layer{i}.weight": torch.randn(8, 16, generator=g) for i in range(40)}
    return state | {"flag": torch.tensor([True, False, True]), "big": big, "rows": big[3:5, ::2],  # a strided view
                    "half": torch.randn(7, generator=g).half(), "step": torch.tensor(3), "empty": torch.zeros(0)}


def _assert_load_many_is_load(path) -> None:
    with open_checkpoint(path) as ckpt:
        together = ckpt.load_many(ckpt.tensors)
        for info, tensor in zip(ckpt.tensors, together):
            alone = ckpt.load(info)
            assert (tensor.dtype, tensor.shape, tensor.stride()) == (alone.dtype, alone.shape, alone.stride())
            assert torch.equal(tensor, alone), info.name
        together[0].add_(1.0)  # memory of its own: neither the file nor the next read sees it
        assert not torch.equal(together[0], ckpt.load(ckpt.tensors[0]))


def test_load_many_reads_what_load_reads_from_a_torch_zip(tmp_path):
    torch.save(_torch_zip_state(), tmp_path / "m.pt")
    _assert_load_many_is_load(tmp_path / "m.pt")


def test_load_many_reads_a_deflated_torch_zip_record_by_record(tmp_path):
    torch.save(_torch_zip_state(), tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, \
            zipfile.ZipFile(tmp_path / "m.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    _assert_load_many_is_load(tmp_path / "m.pt")


def test_load_many_of_a_damaged_record_fails_as_load_does(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({f"w{i}": torch.full((4,), float(i)) for i in range(5)}, path)
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo(next(n for n in zf.namelist() if n.endswith("/data/2"))).header_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = b"XXXX"  # the local header's signature of the third storage record
    path.write_bytes(bytes(data))
    with open_checkpoint(path) as ckpt:
        with pytest.raises(CorruptCheckpointError, match="storage record .*/data/2 lies outside the file") as alone:
            ckpt.load(ckpt.tensors[2])
        with pytest.raises(CorruptCheckpointError) as together:
            ckpt.load_many(ckpt.tensors)
        assert str(together.value) == str(alone.value)


def _series(tmp_path) -> list:
    """Three checkpoints of a run (safetensors), small tensors of several dtypes, one large, one reshaped."""
    g = torch.Generator().manual_seed(4)
    state = {"emb.weight": torch.randn(80, 64, generator=g),  # 5,120 elements: the per-tensor path
             "ln.weight": torch.ones(64), "ln.bias": torch.zeros(64), "fc.weight": torch.randn(16, 64, generator=g),
             "fc.bias": torch.randn(16, generator=g).bfloat16(), "head.weight": torch.randn(4, 16, generator=g)}
    paths = []
    for step in (100, 200, 300):
        for t in state.values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g).to(t.dtype), alpha=0.01)
        if step == 300:
            state["head.weight"] = torch.randn(5, 16, generator=g)  # reshaped: no update row
        path = tmp_path / f"step_{step}.safetensors"
        save_file(state, str(path))
        paths.append(path)
    return paths


def _rows(paths) -> dict:
    opened = [open_checkpoint(p) for p in paths]
    try:
        for ckpt in opened:
            classify(ckpt)
        source = RowSource("run", paths[2].name, paths[1].name, 1, 1)
        return checkpoint_rows(source, opened[2], opened[1], opened[0])
    finally:
        for ckpt in opened:
            ckpt.close()


def test_checkpoint_rows_are_the_same_batched_or_one_tensor_at_a_time(tmp_path, monkeypatch):
    paths = _series(tmp_path)
    batched = _rows(paths)
    monkeypatch.setattr(rows_module, "EXACT_PERCENTILE_NUMEL", -1)  # no tensor is small: every one alone
    alone = _rows(paths)
    for table in (TableName.TENSORS, TableName.HISTOGRAMS, TableName.UPDATES, TableName.EVENTS):
        a = table_from_rows(batched[table], arrow_schema(table)).to_pylist()
        b = table_from_rows(alone[table], arrow_schema(table)).to_pylist()
        assert len(a) == len(b) and len(a) > 0 or table == TableName.EVENTS
        for row_a, row_b in zip(a, b):
            assert row_a.keys() == row_b.keys()
            for key in row_a:
                x, y = row_a[key], row_b[key]
                if key in ("update_norm", "update_ratio", "cosine", "dist_from_first", "rel_dist_from_first"):
                    assert _same(x, y) or x == pytest.approx(y, rel=1e-12), key
                else:
                    assert x == y or (isinstance(x, float) and _same(x, y)), (table, key, x, y)
    names = [r["name"] for r in batched[TableName.UPDATES]]
    assert "head.weight" not in names and len(names) == 5  # 6 tensors, the reshaped one has no update row


def test_table_from_rows_equals_pyarrow_from_pylist():
    rows = [
        {"run": "r", "checkpoint": "c", "step": None, "group": "", "name": "a", "lo": np.array([1.0, 2.0]),
         "hi": [2.0, 3.0], "counts": np.array([1, 2])},
        {"run": "r", "checkpoint": "c", "step": 5, "group": "", "name": "é", "lo": [], "hi": [], "counts": []},
        {"run": None, "checkpoint": "c", "step": 7, "group": "g", "name": "b", "lo": None, "hi": [4.0], "counts": [3]},
    ]
    schema = arrow_schema(TableName.HISTOGRAMS)
    plain = [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items()} for r in rows]
    assert table_from_rows(rows, schema).equals(pa.Table.from_pylist(plain, schema=schema))
    tensors = [{"run": "r", "mean": 1, "numel": 3, "p50": 0.5}, {"run": "x", "mean": None, "numel": None}]
    schema = arrow_schema(TableName.TENSORS)
    assert table_from_rows(tensors, schema).equals(pa.Table.from_pylist(tensors, schema=schema))
    assert table_from_rows([], schema).schema == schema


def test_table_from_rows_refuses_a_float_in_an_integer_column():
    with pytest.raises(TypeError, match="column 'numel' \\(int64\\): a float in an integer column"):
        table_from_rows([{"numel": 1.5}], arrow_schema(TableName.TENSORS))


def test_summarize_imports_no_pandas(tmp_path):
    save_file({"w": torch.ones(3, 3), "b": torch.zeros(3)}, str(tmp_path / "step_1.safetensors"))
    probe = ("import sys\nfrom ckptboard.core.summarize import summarize\n"
             f"report = summarize({str(tmp_path)!r}, cache_dir={str(tmp_path / 'cache')!r})\n"
             "assert report.ok and report.tensors == 2, report\n"
             "print('pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
