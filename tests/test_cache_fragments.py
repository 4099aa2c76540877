"""Cache fragments: round trip, key lookup, atomic writes (an injected failure, a killed writer), bad fragments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq
import pytest
import torch

from ckptboard.core import fragment
from ckptboard.core.fragment import FORMAT_VERSION, FragmentReadError, Header, read_fragment, read_header
from ckptboard.core.cache import LookupStatus, StatsCache, cache_key
from ckptboard.core.discover import discover
from ckptboard.core.errors import CacheError
from ckptboard.core.schema import TENSOR_COLUMNS

_KEY = {"relpath": "run/a.pt", "size": 10, "mtime_ns": 5}
_ROWS = {
    "tensors": [{"run": "run", "checkpoint": "run/a.pt", "step": 3, "name": "fc.weight", "mean": 0.25, "numel": 6}],
    "histograms": [{"run": "run", "name": "fc.weight", "lo": [0.0, 0.5], "hi": [0.5, 1.0], "counts": [2, 4]}],
}


def test_fragment_round_trip_keeps_rows_key_and_columns(tmp_path):
    fragment.write_fragment(tmp_path, "f", Header(_KEY, {"status": "ok"}), _ROWS)
    header, tables = read_fragment(tmp_path, "f")
    assert header == Header(_KEY, {"status": "ok"})
    assert tuple(tables["tensors"].column_names) == TENSOR_COLUMNS
    row = tables["tensors"].to_pylist()[0]
    assert (row["step"], row["name"], row["mean"], row["numel"], row["std"]) == (3, "fc.weight", 0.25, 6, None)
    assert tables["histograms"].to_pylist()[0]["counts"] == [2, 4]
    assert tables["updates"].num_rows == 0 and tables["errors"].num_rows == 0


def test_fragment_is_one_flat_file_per_table_with_rows_plus_the_commit_record(tmp_path):
    fragment.write_fragment(tmp_path, "f", Header(_KEY, {}), _ROWS)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet")) == [
        "checkpoints/f.parquet", "histograms/f.parquet", "tensors/f.parquet"]  # empty tables have no file
    assert pq.read_schema(tmp_path / "tensors" / "f.parquet").names == list(TENSOR_COLUMNS)  # flat, not nested
    fragment.write_fragment(tmp_path, "f", Header(_KEY, {}), {"tensors": _ROWS["tensors"]})
    assert not (tmp_path / "histograms" / "f.parquet").exists()  # a rewrite leaves no stale table behind


def test_histogram_rows_are_sorted_by_tensor_in_small_row_groups(tmp_path):
    names = [f"layer{i:03d}.weight" for i in range(300)][::-1]
    rows = {"histograms": [{"run": "r", "group": "", "name": n, "lo": [0.0], "hi": [1.0], "counts": [1]}
                           for n in names]}
    fragment.write_fragment(tmp_path, "f", Header(_KEY, {}), rows)
    file = pq.ParquetFile(tmp_path / "histograms" / "f.parquet")
    assert file.read().column("name").to_pylist() == sorted(names)
    assert file.num_row_groups == 3  # 300 rows in groups of 128: 128 + 128 + 44


def test_lookup_hit_stale_miss(tmp_path):
    cache = StatsCache(tmp_path, tmp_path / "cache")
    cache.ensure()
    assert cache.lookup("run/a.pt", _KEY).status == "miss"
    cache.write("run/a.pt", Header(_KEY, {}), _ROWS)
    assert cache.lookup("run/a.pt", _KEY).hit
    assert cache.lookup("run/a.pt", {**_KEY, "mtime_ns": 6}).status == "stale"


def test_fragment_of_another_format_version_is_invalid(tmp_path):
    path = fragment.write_fragment(tmp_path, "old", Header(_KEY, {}), _ROWS)
    table = pq.read_table(path)
    metadata = {**table.schema.metadata, b"ckptboard.format_version": str(FORMAT_VERSION - 1).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)
    with pytest.raises(FragmentReadError, match=f"format version {FORMAT_VERSION - 1}, this ckptboard reads"):
        read_header(path)


def test_truncated_fragment_is_invalid(tmp_path):
    cache = StatsCache(tmp_path, tmp_path / "cache")
    cache.ensure()
    path = cache.write("run/a.pt", Header(_KEY, {}), _ROWS)
    path.write_bytes(path.read_bytes()[:-100])
    lookup = cache.lookup("run/a.pt", _KEY)
    assert lookup.status == "invalid" and "unreadable" in lookup.problem


def test_writer_killed_mid_write_leaves_previous_fragment_intact(tmp_path):
    cache = StatsCache(tmp_path, tmp_path / "cache")
    cache.ensure()
    path = cache.write("run/a.pt", Header(_KEY, {"status": "ok"}), _ROWS)
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from ckptboard.core.atomic import atomic_write
        def slow(f):
            f.write(b"PAR1 the first half of a new fragment")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        atomic_write(Path({str(path)!r}), slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert read_header(path) == Header(_KEY, {"status": "ok"})  # the old fragment, whole
    assert cache.fragments() == [path]  # the dead writer's temp file is no fragment
    temps = [p for p in path.parent.iterdir() if p.name.startswith(fragment.TMP_PREFIX)]
    assert len(temps) == 1
    old = time.time() - 2 * 3600
    os.utime(temps[0], (old, old))
    cache.prune(["run/a.pt"])  # a temp file older than an hour belongs to a dead writer
    assert list(path.parent.iterdir()) == [path]


def test_prune_removes_fragments_of_deleted_checkpoints_only(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "kept.pt").write_bytes(b"x")
    cache = StatsCache(tmp_path, tmp_path / "cache")
    cache.ensure()
    for relpath in ("run/kept.pt", "run/deleted.pt"):
        cache.write(relpath, Header({**_KEY, "relpath": relpath}, {}), {})
    assert cache.prune([]) == 1  # kept.pt still exists on disk, so it stays even if not listed
    assert [p.name for p in cache.fragments()] == [cache.fragment_path("run/kept.pt").name]


def test_unwritable_cache_dir_says_to_pass_cache_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(CacheError, match="pass --cache-dir DIR"):
        StatsCache(tmp_path, blocker / "cache").ensure()  # a folder cannot be made under a file, even as root


def test_fragment_names_are_distinct_and_readable(tmp_path):
    cache = StatsCache(tmp_path)
    a, b = cache.fragment_path("run/a b.pt"), cache.fragment_path("run/a_b.pt")
    assert a != b and a.name.startswith("run_a_b.pt-") and a.parent == tmp_path / ".ckptboard" / "checkpoints"


def test_cache_key_names_the_checkpoint_its_previous_and_first_and_the_model(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2, 3):
        torch.save({"w": torch.zeros(step)}, run / f"step={step}.pt")
    files = discover(tmp_path)[0].checkpoints
    ids = [[f.relpath, f.size, f.mtime_ns, f.ino, f.ctime_ns] for f in files]
    assert cache_key(files[0], None, None, None) == {
        "relpath": "run/step=1.pt", "size": files[0].size, "mtime_ns": files[0].mtime_ns,
        "ino": files[0].ino, "ctime_ns": files[0].ctime_ns,
        "prev": None, "first": None, "model": None, "spectral": "off", "format_version": FORMAT_VERSION,
    }
    third = cache_key(files[2], files[1], files[0], "abc", "full")
    assert (third["prev"], third["first"], third["model"], third["spectral"]) == (ids[1], ids[0], "abc", "full")


def test_a_fragment_with_more_spectral_work_serves_a_request_for_less(tmp_path):
    cache = StatsCache(tmp_path)
    cache.ensure()
    full = {**_KEY, "spectral": "full"}
    cache.write("run/a.pt", Header(full, {}), _ROWS)
    assert cache.lookup("run/a.pt", {**_KEY, "spectral": "off"}).status is LookupStatus.HIT
    assert cache.lookup("run/a.pt", {**_KEY, "spectral": "default"}).status is LookupStatus.HIT
    cache.write("run/a.pt", Header({**_KEY, "spectral": "default"}, {}), _ROWS)
    assert cache.lookup("run/a.pt", full).status is LookupStatus.STALE  # alpha was never computed
    assert cache.lookup("run/a.pt", {**full, "spectral": "default", "model": "other"}).status is LookupStatus.STALE


def test_lookup_status_is_an_enum_with_the_documented_values(tmp_path):
    cache = StatsCache(tmp_path)
    cache.ensure()
    assert cache.lookup("run/a.pt", _KEY).status is LookupStatus.MISS
    cache.write("run/a.pt", Header(_KEY, {}), _ROWS)
    assert cache.lookup("run/a.pt", _KEY).status is LookupStatus.HIT
    assert [str(s) for s in LookupStatus] == ["hit", "miss", "stale", "invalid"]
