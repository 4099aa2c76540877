"""Sharded checkpoints written by the real libraries: FSDP2 ``dcp.save`` series whose parameters are split into
chunks larger than the exact-percentile size, and Hugging Face ``save_pretrained`` folders in several shards."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from _fixtures_procs import leave_rank

__all__ = ["shard_model", "fsdp2_series", "hf_sharded_series", "age", "assert_same_fragments", "assert_like_assembled"]


def shard_model() -> nn.Sequential:
    """Linear(96, 80) + LayerNorm(80) + Linear(80, 72), seeded: two weights of 7,680 and 5,760 elements (more than
    ``EXACT_PERCENTILE_NUMEL`` = 4,096, so their chunks take the per-chunk path) and small vectors (read whole)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(96, 80), nn.LayerNorm(80), nn.Linear(80, 72))


def _series_worker(rank: int, world: int, root: str, steps: list[int], store: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        model = shard_model()
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        torch.manual_seed(1)
        for step in range(1, max(steps) + 1):
            model(torch.randn(4, 96)).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
            if step in steps:
                msd, osd = get_state_dict(model, opt)
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=f"{root}/step-{step}")
    finally:
        dist.destroy_process_group()
    leave_rank()


def fsdp2_series(run: Path, steps: list[int], world: int) -> None:
    """``dcp.save`` of an FSDP2 (``fully_shard``) :func:`shard_model` and its AdamW by ``world`` gloo ranks after
    each of ``steps`` optimizer steps, into ``run/step-N/``: each weight in ``world`` row chunks, one per rank's file."""
    import torch.multiprocessing as mp

    run.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        # A gloo rank sometimes aborts at exit ("terminate called without an active exception") on this busy
        # machine after its checkpoints are written: the whole series is written again once.
        store = run / f".rendezvous-{world}-{attempt}"
        try:
            mp.spawn(_series_worker, args=(world, str(run), steps, str(store)), nprocs=world)
            return
        except mp.ProcessExitedException:
            if attempt:
                raise
            for step in steps:
                shutil.rmtree(run / f"step-{step}", ignore_errors=True)
        finally:
            store.unlink(missing_ok=True)


def hf_sharded_series(run: Path, steps: int = 2) -> list[Path]:
    """A tiny GPT-2's ``save_pretrained(max_shard_size="40KB")`` folders ``run/checkpoint-N/`` (several
    ``model-0000X-of-0000N.safetensors`` shards and their index), the weights perturbed between saves."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    folders = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        folder = run / f"checkpoint-{step}"
        model.save_pretrained(folder, max_shard_size="40KB")
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) >= 3, "the fixture wants several shards"
        folders.append(folder)
    return folders


def age(root: Path, seconds: float = 3600) -> None:
    """Every file under ``root`` modified ``seconds`` ago: not taken for a checkpoint still being written."""
    then = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN, lists element by element."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_fragments(one: Path, other: Path, ignore: tuple[str, ...] = ()) -> None:
    """The two cache folders hold the same fragments with the same rows of every table, in the same order, equal
    bit for bit (columns in ``ignore`` left out)."""
    from ckptboard.core.fragment import read_fragment

    stems = sorted(p.stem for p in (one / "checkpoints").glob("*.parquet"))
    assert stems == sorted(p.stem for p in (other / "checkpoints").glob("*.parquet")) and stems
    for stem in stems:
        _, a = read_fragment(one, stem)
        _, b = read_fragment(other, stem)
        for name in a:
            left, right = a[name].to_pylist(), b[name].to_pylist()
            assert len(left) == len(right), (stem, name)
            for x, y in zip(left, right):
                assert x.keys() == y.keys()
                bad = [k for k in x if k not in ignore and not _same(x[k], y[k])]
                assert not bad, (stem, name, x.get("name"), bad)


def assert_like_assembled(whole, split, names) -> None:
    """The ``tensors`` and ``histograms`` rows of ``names`` in ``split`` (tables indexed by name, one checkpoint) are
    those of the assembled tensors in ``whole``: counts, extremes, histogram, percentiles exactly; std, abs_mean, norm
    to 1e-12 relative and the mean to 1e-12 of the RMS (a split tensor's sums are added in another order than one
    pass over the whole: README, *Tensors in parts*)."""
    import numpy as np
    import pytest

    from ckptboard.core.stats import EXACT_PERCENTILE_NUMEL

    (ta, ha), (tb, hb) = whole, split
    for name in names:
        assert tb.loc[name, "numel"] > EXACT_PERCENTILE_NUMEL
        for column in [c for c in ta.columns if c.startswith("p") and c[1:].isdigit()] + [
            "numel", "zeros", "nans", "posinfs", "neginfs", "min", "max"
        ]:
            assert tb.loc[name, column] == ta.loc[name, column], (name, column)
        for column in ("std", "abs_mean", "norm"):
            assert tb.loc[name, column] == pytest.approx(ta.loc[name, column], rel=1e-12, abs=0.0), (name, column)
        rms = math.hypot(ta.loc[name, "mean"], ta.loc[name, "std"])  # the mean's error is one of the RMS
        assert tb.loc[name, "mean"] == pytest.approx(ta.loc[name, "mean"], rel=0.0, abs=1e-12 * rms), name
        for column in ("lo", "hi", "counts"):
            np.testing.assert_array_equal(np.asarray(hb.loc[name, column]), np.asarray(ha.loc[name, column]))
