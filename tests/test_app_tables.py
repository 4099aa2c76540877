"""Tables the app sends to the browser are capped (a dataframe is sent whole on each rerun): the Tensors and Compare
views show at most ``TABLE_ROWS`` rows, the most relevant ones, say so, and offer the whole table as a download."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _fixtures_app import app_test
from ckptboard.dashboard.views import View
from ckptboard.dashboard.views._tables import TABLE_ROWS

LAYERS = 650  # Linear(1, 1 + i // 100): a weight and a bias of 1 + i // 100 elements each, 1,300 tensors


def _wide_net() -> nn.Module:
    return nn.Sequential(*(nn.Linear(1, 1 + i // 100) for i in range(LAYERS)))


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """Two torch.save checkpoints of a 1,300-tensor model, the second a seeded step from the first, summarised."""
    from ckptboard.core.summarize import summarize

    root = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    net = _wide_net()
    (root / "run").mkdir()
    for step in (1, 2):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        torch.save(net.state_dict(), root / "run" / f"step_{step}.pt")
    summarize(root)
    return root


def _open(root, view: View):
    at = app_test(str(root))
    at.session_state["view"] = view
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _table(at, column: str):
    """The dataframe with ``column`` (AppTest does not expose a dataframe's key)."""
    return next(d for d in at.dataframe if column in d.value.columns)


def test_tensors_table_shows_the_largest_in_file_order_and_offers_the_rest(wide_run):
    at = _open(wide_run, View.TENSORS)
    shown = _table(at, "nonfinite").value
    assert TABLE_ROWS == 1_000 and len(shown) == TABLE_ROWS
    # Largest first: layers 600-649 (7 elements: 100 tensors), 500-599 … 200-299 (6 … 3: 200 tensors each), 900 so
    # far; the last 100 from the 200 tensors of 2 elements (layers 100-199), the earlier ones: layers 100-149.
    layers = sorted({int(n.split(".")[0]) for n in shown["name"]})
    assert layers == [*range(100, 150), *range(200, LAYERS)]
    assert list(shown["name"][:2]) == ["100.weight", "100.bias"]  # in file order, not by size
    assert any("1,000 of 1,300 tensors shown" in c.value for c in at.caption)
    assert at.get("download_button"), "the whole table is one download away"


def test_tensors_table_whole_when_it_fits(wide_run):
    at = _open(wide_run, View.TENSORS)
    at.text_input(key="sidebar_filter").input(r"^6\d\d\.").run()  # layers 600-649: 100 tensors
    assert not at.exception, [e.value for e in at.exception]
    assert len(_table(at, "nonfinite").value) == 100
    assert not at.get("download_button")


def test_whole_tensor_table_behind_the_download(wide_run):
    from ckptboard.core.dataset import StatsDataset
    from ckptboard.dashboard.figures.tensors import TENSOR_TABLE_INPUT, tensor_table
    from ckptboard.dashboard.views.tensors import shown_tensors

    view = StatsDataset(wide_run).view().narrow(columns=TENSOR_TABLE_INPUT)
    whole = tensor_table(view, "run/step_2.pt")
    shown, total = shown_tensors(view, "run/step_2.pt")
    assert total == len(whole) == 2 * LAYERS
    kept = whole[whole["name"].isin(shown["name"])].reset_index(drop=True)
    assert len(kept) == TABLE_ROWS and shown.equals(kept)  # rows of the whole table, unchanged, in its order


def test_compare_table_shows_the_largest_changes(wide_run):
    from ckptboard.core.health import compare_checkpoints
    from ckptboard.core.load import load_stats

    at = _open(wide_run, View.COMPARE)
    shown = _table(at, "rel_change").value
    ranked = compare_checkpoints(load_stats(wide_run), "run/step_1.pt", "run/step_2.pt").changes
    assert len(ranked) == 2 * LAYERS and len(shown) == TABLE_ROWS
    assert shown.reset_index(drop=True).equals(ranked.head(TABLE_ROWS))
    assert any("1,000 of 1,300 tensors shown" in c.value for c in at.caption)
