"""Overview figure, checkpoints table, error cards and the tensors table."""

import numpy as np
import pytest

from ckptboard.core.errors import UsageError
from ckptboard.core.schema import StatsTables
from ckptboard.core.health import error_cards
from ckptboard.dashboard.figures._common import byte_ticks
from ckptboard.dashboard.figures.overview import checkpoints_table, runs_overview_figure
from ckptboard.dashboard.figures.tensors import TENSOR_TABLE_COLUMNS, tensor_table
from _fixtures_tables import STEP_EVERY, synthetic_tables


@pytest.fixture(scope="module")
def tables():
    return synthetic_tables(n_checkpoints=4, n_tensors=16, runs=2)


def test_runs_overview_one_trace_per_run_per_panel(tables):
    fig = runs_overview_figure(tables)
    names = [t.name for t in fig.data]
    assert names == ["run0", "run0", "run1", "run1", "single", "single"]
    size, params = fig.data[0], fig.data[1]
    assert list(size.x) == [0, STEP_EVERY, 2 * STEP_EVERY, 3 * STEP_EVERY]
    ck = tables.checkpoints[tables.checkpoints["run"] == "run0"]
    assert list(size.y) == ck["size_bytes"].tolist()
    # parameter elements: 2 blocks x (8*8*3*3 conv + 8 + 8 bn) = 1184, embed 16*8 = 128, temperature 1,
    # fc 10*16 + 10 = 170 -> 1483
    assert params.y.tolist() == [1483.0] * 4
    assert fig.layout.xaxis2.title.text == "step"
    # Constant counts stay readable: both panels start at zero, counts as whole numbers.
    assert fig.layout.yaxis.rangemode == fig.layout.yaxis2.rangemode == "tozero"
    assert fig.layout.yaxis2.tickformat == ",d"


def test_one_checkpoint_run_is_one_point(tables):
    single = [t for t in runs_overview_figure(tables).data if t.name == "single"]
    assert [len(t.x) for t in single] == [1, 1]


def test_runs_overview_empty():
    fig = runs_overview_figure(StatsTables.empty())
    assert len(fig.data) == 0
    assert "No checkpoints" in fig.layout.annotations[0].text


def test_byte_ticks_read_like_the_table():
    # top 184 KiB = 188416 bytes: unit KiB, 184 / 5 = 36.8 -> step 50 KiB; ticks 0..200 KiB (the last above top)
    values, labels = byte_ticks(188416)
    assert values == [0, 51200, 102400, 153600, 204800]
    assert labels == ["0 B", "50.0 KiB", "100.0 KiB", "150.0 KiB", "200.0 KiB"]


def test_equal_runs_stay_visible(tables):
    # three runs with the same sizes would hide each other: each gets its own marker, dash and width
    fig = runs_overview_figure(tables)
    size_traces = fig.data[0::2]
    assert len({t.marker.symbol for t in size_traces}) == len({t.line.dash for t in size_traces}) == 3
    widths = [t.line.width for t in size_traces]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]


def test_checkpoints_table_sorted_with_size(tables):
    df = checkpoints_table(tables, "run1")
    assert df["step"].tolist() == [0, 100, 200, 300]
    assert df["size"].iloc[0].endswith("KiB")
    assert len(checkpoints_table(tables)) == 9  # 4 + 4 + 1
    # one size column, and the metadata (shown under the table) not squeezed into it
    assert "size_bytes" not in df.columns and "metadata_json" not in df.columns
    assert df["parameter_bytes"].iloc[0].endswith("iB")


def test_error_cards(tables):
    assert error_cards(tables) == [{
        "run": "run0", "checkpoint": "run0/ckpt_broken.pt", "error": "CorruptCheckpointError",
        "message": "run0/ckpt_broken.pt: truncated zip archive (central directory missing); re-save the file",
    }]
    assert error_cards(StatsTables.empty()) == []


def test_tensor_table_filters_and_columns(tables):
    df = tensor_table(tables, "run0/ckpt_00003.pt", pattern="FC|temp")
    assert list(df.columns) == list(TENSOR_TABLE_COLUMNS)
    assert df["name"].tolist() == ["temperature", "fc.weight", "fc.bias"]  # file order, case-insensitive
    bias = df.set_index("name").loc["fc.bias"]
    assert bias["nonfinite"] == 2 and np.isnan(bias["norm"])  # the NaN tail of run0
    assert bias["shape"] == "[10]" and bias["size"] == "40 B"  # 10 float32
    one = df.set_index("name").loc["temperature"]
    assert one["numel"] == 1 and one["std"] == 0.0


def test_tensor_table_kind_module_and_bad_pattern(tables):
    df = tensor_table(tables, "run0/ckpt_00000.pt", kinds=["buffer"], module="block0.bn")
    assert df["name"].tolist() == ["block0.bn.running_mean", "block0.bn.running_var", "block0.bn.num_batches_tracked"]
    assert df["shape"].iloc[2] == "[]"
    assert tensor_table(tables, "no/such.pt").empty
    with pytest.raises(UsageError, match="not a valid regular expression"):
        tensor_table(tables, "run0/ckpt_00000.pt", pattern="(")


def test_byte_ticks_of_nothing_are_one_zero_tick():
    # A run whose checkpoints hold no bytes (or a NaN size) still gets an axis: one tick at 0 labelled like the table.
    for top in (0, 0.0, float("nan")):
        assert byte_ticks(top) == ([0.0], ["0 B"])
