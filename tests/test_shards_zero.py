"""DeepSpeed ZeRO-3 ``global_stepN/`` folders as shard tasks: each parameter's rank slices are its chunks (one per
``zero_pp_rank_R_mp_rank_XX_optim_states.pt``, in rank order, padding excluded), summarised one slice at a time and
merged exactly; the shard planner makes one task per rank's optim-states file. DeepSpeed does not run here: the
fixture writes the folders as ``deepspeed/runtime/engine.py`` does (:func:`_fixtures_layouts.deepspeed_checkpoint`)."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
import torch
from _fixtures_layouts import deepspeed_checkpoint
from _fixtures_shards import age, assert_like_assembled, assert_same_fragments

from ckptboard.core.executors import LocalExecutor
from ckptboard.core.formats.deepspeed_zero import Zero3Reader
from ckptboard.core.formats.torchzip import TorchZipReader
from ckptboard.core.load import load_stats
from ckptboard.core.merge import PARTS_DIRNAME
from ckptboard.core.reader import open_checkpoint
from ckptboard.core.shards import split_chunks
from ckptboard.core.stats import EXACT_PERCENTILE_NUMEL
from ckptboard.core.summarize import execute, plan, shard_tasks

_WORLD, _VOCAB, _WIDTH = 4, 999, 1000
# emb.weight (tied to head.weight): 999 x 6 = 5,994 elements, ceil(5,994 / 4) = 1,499 a rank, the last rank's slice
# 5,994 - 3 x 1,499 = 1,497 (2 padding); frozen.weight (frozen fragments in the model-states files): 5 x 1,000 =
# 5,000, 1,250 a rank. Both are larger than EXACT_PERCENTILE_NUMEL (4,096): the per-slice path.
_SPLIT = ("emb.weight", "head.weight", "frozen.weight")


def _series(root: Path, stage: int = 3) -> dict[int, torch.nn.Module]:
    return {step: deepspeed_checkpoint(root, f"global_step{step}", stage=stage, world=_WORLD, seed=step,
                                       vocab=_VOCAB, width=_WIDTH) for step in (10, 20)}


@pytest.fixture(scope="module")
def zero_root(tmp_path_factory) -> tuple[Path, dict[int, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("zero3")
    models = _series(root)
    age(root)
    return root, models


def _summarise(root: Path, cache: Path, executor, split: bool):
    report = execute(plan(root, cache_dir=cache), executor, split=split)
    assert report.ok, report.failures
    assert not (cache / PARTS_DIRNAME).exists()  # every part's results merged and removed
    return report


def test_zero3_slices_are_chunks_in_rank_order_without_padding(zero_root):
    root, _ = zero_root
    with open_checkpoint(root / "global_step10") as ckpt:
        emb = next(t for t in ckpt.tensors if t.name == "emb.weight")
        chunks = split_chunks(ckpt, emb)
        assert [(c.rank, c.start, c.count) for c in chunks] == [(0, 0, 1499), (1, 1499, 1499), (2, 2998, 1499),
                                                                (3, 4497, 1497)]
        assert [c.file for c in chunks] == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4)]
        frozen = split_chunks(ckpt, next(t for t in ckpt.tensors if t.name == "frozen.weight"))
        assert [c.file for c in frozen] == [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(4)]
        assert split_chunks(ckpt, next(t for t in ckpt.tensors if t.name == "fc.weight")) is None  # 15: read whole


def test_zero3_one_task_and_one_task_per_rank_file_give_the_same_tables(zero_root, tmp_path):
    root, _ = zero_root
    _summarise(root, tmp_path / "one", LocalExecutor(1), split=False)
    parts = shard_tasks(plan(root, cache_dir=tmp_path / "many").tasks, 2, split=True)
    assert [t.part.count for t in parts] == [_WORLD] * 8  # 2 checkpoints x 4 optim-states files
    models = tuple(f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(_WORLD))
    assert parts[0].part.files == ("zero_pp_rank_0_mp_rank_00_optim_states.pt", *models)  # the lead: buffers, frozen
    assert parts[3].part.files == ("zero_pp_rank_3_mp_rank_00_optim_states.pt",)
    many = _summarise(root, tmp_path / "many", LocalExecutor(2), split=True)
    assert many.checkpoints == 2 and many.tensors == 2 * 11  # 8 parameter names (head.weight tied), 3 buffers
    assert_same_fragments(tmp_path / "one", tmp_path / "many")
    tables = load_stats(root, tmp_path / "many")
    assert set(tables.updates.name) >= set(_SPLIT)  # step 20's slices against step 10's


def test_zero3_statistics_equal_those_of_the_rebuilt_weights(zero_root, tmp_path):
    """Against the same weights saved whole (``torch.save`` of the model's state_dict), as
    :func:`assert_like_assembled` says; the update statistics (step 20 against step 10) to 1e-12 relative."""
    root, models = zero_root
    whole = tmp_path / "whole"
    whole.mkdir()
    for step, model in models.items():
        torch.save(model.state_dict(), whole / f"global_step{step}.pt")
    age(whole)
    _summarise(whole, tmp_path / "a", LocalExecutor(1), split=False)
    _summarise(root, tmp_path / "b", LocalExecutor(2), split=True)
    a, b = load_stats(whole, tmp_path / "a"), load_stats(root, tmp_path / "b")
    rows = [(t.tensors[t.tensors.checkpoint == c].set_index("name"), t.histograms[t.histograms.checkpoint == c]
             .set_index("name")) for t, c in ((a, "global_step20.pt"), (b, "global_step20"))]
    assert sorted(rows[0][0].index) == sorted(rows[1][0].index)
    assert_like_assembled(rows[0], rows[1], _SPLIT)
    ua, ub = a.updates.set_index("name"), b.updates.set_index("name")
    for name in _SPLIT:
        for column in ("update_norm", "update_ratio", "cosine", "dist_from_first", "rel_dist_from_first"):
            assert ub.loc[name, column] == pytest.approx(ua.loc[name, column], rel=1e-12, abs=0.0), (name, column)


def test_a_zero3_weight_is_read_one_rank_slice_at_a_time(zero_root, tmp_path, monkeypatch):
    """No parameter above the exact-percentile size is assembled, and no read from a rank file returns more than one
    slice: each flat group (1,499 x 2 + 15 + 3 + 5 + 5 = 3,026 elements a rank) is never read whole (spies on the
    real readers: every read still happens)."""
    assembled, reads = [], []
    materialise, read_elements = Zero3Reader.materialise, TorchZipReader.read_elements

    def spy_materialise(self, lazy, device):
        out = materialise(self, lazy, device)
        if not any(frame.name == "gradient_rows" for frame in traceback.extract_stack()):
            assembled.append(out.numel())
        return out

    def spy_read_elements(self, lazy, start, count):
        out = read_elements(self, lazy, start, count)
        reads.append((out.numel(), count))
        return out

    monkeypatch.setattr(Zero3Reader, "materialise", spy_materialise)
    monkeypatch.setattr(TorchZipReader, "read_elements", spy_read_elements)
    root, _ = zero_root
    _summarise(root, tmp_path / "c", LocalExecutor(1), split=False)
    assert assembled and max(assembled) <= EXACT_PERCENTILE_NUMEL
    assert reads and all(got == count for got, count in reads)
    assert max(count for _, count in reads) == 1499  # emb.weight's slice on ranks 0-2 (frozen.weight's: 1,250)


def test_zero2_folders_are_not_split(tmp_path):
    _series(tmp_path, stage=2)
    parts = shard_tasks(plan(tmp_path, cache_dir=tmp_path / "c").tasks, 2, split=True)
    assert [t.part for t in parts] == [None, None]  # one model-states file holds every weight


def test_zero3_with_model_parallel_ranks_splits_by_every_optim_states_file(tmp_path):
    # tensor parallelism 2 x data parallelism 2: 4 optim-states files, 4 parts; each mp rank's group is merged from
    # its own 2 slices (zero_pp_rank_{0,1}_mp_rank_XX), never from the other mp rank's
    for step in (10, 20):
        deepspeed_checkpoint(tmp_path / "run", f"global_step{step}", stage=3, world=2, mp=2, seed=step, vocab=_VOCAB,
                             width=_WIDTH)
    root = tmp_path / "run"
    age(root)
    parts = shard_tasks(plan(root, cache_dir=tmp_path / "many").tasks, 2, split=True)
    assert [t.part.count for t in parts] == [4] * 8
    assert [t.part.files[0] for t in parts[:4]] == [f"zero_pp_rank_{dp}_mp_rank_{mp:02d}_optim_states.pt"
                                                    for mp in (0, 1) for dp in (0, 1)]
    _summarise(root, tmp_path / "one", LocalExecutor(1), split=False)
    _summarise(root, tmp_path / "many", LocalExecutor(2), split=True)
    assert_same_fragments(tmp_path / "one", tmp_path / "many")
    tables = load_stats(root, tmp_path / "many")
    emb = tables.tensors[tables.tensors.name == "emb.weight"]
    assert sorted(emb.group) == ["mp_rank_00", "mp_rank_00", "mp_rank_01", "mp_rank_01"] and emb.numel.eq(5994).all()


def test_a_truncated_rank_file_fails_its_checkpoint_in_one_line(zero_root, tmp_path):
    import shutil

    root = tmp_path / "ckpts"
    shutil.copytree(zero_root[0], root)
    path = root / "global_step20" / "zero_pp_rank_2_mp_rank_00_optim_states.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    age(root)
    for folder in root.iterdir():  # long ago: damaged, not being written
        os.utime(folder, ns=(10**18, 10**18))
    report = execute(plan(root, cache_dir=tmp_path / "c"), LocalExecutor(2), split=True)
    assert report.checkpoints == 1 and [f.relpath for f in report.failures] == ["global_step20"]
    assert report.failures[0].error in ("CorruptCheckpointError", "NotACheckpointError")
    assert "\n" not in report.failures[0].message
    assert not (tmp_path / "c" / PARTS_DIRNAME).exists()


def test_zero3_slices_against_a_zero2_predecessor(tmp_path):
    # step 10 saved under ZeRO-2 (whole weights in one model-states file), step 20 under ZeRO-3: each slice's update
    # sums are taken against the same flat range of the previous weight, read whole once per tensor
    deepspeed_checkpoint(tmp_path / "run", "global_step10", stage=2, world=_WORLD, seed=10, vocab=_VOCAB, width=_WIDTH)
    deepspeed_checkpoint(tmp_path / "run", "global_step20", stage=3, world=_WORLD, seed=20, vocab=_VOCAB, width=_WIDTH)
    root = tmp_path / "run"
    age(root)
    _summarise(root, tmp_path / "one", LocalExecutor(1), split=False)
    _summarise(root, tmp_path / "many", LocalExecutor(2), split=True)
    assert_same_fragments(tmp_path / "one", tmp_path / "many")
    updates = load_stats(root, tmp_path / "many").updates.set_index("name")
    assert set(_SPLIT) <= set(updates.index) and updates.loc[list(_SPLIT), "update_norm"].gt(0).all()
