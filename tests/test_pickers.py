"""Tensor pickers at any size: at most OFFERED options (the chosen ones, then the largest matching the sidebar filter
and a search box), any tensor reached by searching, and the defaults the whole-table code chose, kept exactly."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from _fixtures_app import app_test
from ckptboard.core.dataset import Selection, StatsDataset
from ckptboard.core.load import load_stats
from ckptboard.core.summarize import summarize
from ckptboard.dashboard.state import ViewContext
from ckptboard.dashboard.views import View
from ckptboard.dashboard.views._pickers import (
    OFFERED,
    largest_parameters,
    offered,
    picker_index,
    search_pattern,
    tensor_choices,
    worth_seeing,
)

LAYERS = 120  # layers.i = Linear(1, i + 1): weight and bias of i + 1 values each; 240 tensors in all
STEPS = list(range(1, 12))  # 11 checkpoints: worth_seeing reads their updates in batches of 2, 8, then the last


class _Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(1, i + 1) for i in range(LAYERS))


def _write_wide_run(run_dir, *, still=(), late=(), trained=None, seed=0):
    """``step_N.pt`` state_dicts of :class:`_Wide`: every parameter moves by a seeded step at each checkpoint but
    those named in ``still`` (never) and ``late`` (only into the last checkpoint). With ``trained`` (a number of
    layers), the first ``trained`` layers are trained by Adam instead, whose state is saved beside the weights
    (the other layers are then frozen parameters)."""
    torch.manual_seed(seed)
    net = _Wide()
    run_dir.mkdir(parents=True)
    params = [p for layer in net.layers[:trained] for p in layer.parameters()] if trained else []
    opt = torch.optim.Adam(params, lr=1e-3) if trained else None
    for step in STEPS:
        if opt is not None:
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, run_dir / f"step_{step}.pt")
            continue
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name not in still and (name not in late or step == STEPS[-1]):
                    p.add_(0.01 * torch.randn_like(p))
        torch.save(net.state_dict(), run_dir / f"step_{step}.pt")


@pytest.fixture(scope="module")
def wide_root(tmp_path_factory):
    """Run ``a``: the largest layer (119) never moves; run ``b``: every tensor moves; run ``c``: Adam trains layers
    0-99, 100-119 are frozen."""
    root = tmp_path_factory.mktemp("wide") / "root"
    _write_wide_run(root / "a", still=("layers.119.weight", "layers.119.bias"))
    _write_wide_run(root / "b", seed=1)
    _write_wide_run(root / "c", trained=100, seed=2)
    summarize(root)
    return root


# The code these defaults replaced (pandas over whole tables), kept as the oracle they must agree with.
def _reference_worth_seeing(tables, run, options):
    t = tables.tensors
    params = t[(t["run"] == run) & (t["kind"] == "parameter") & (t["trainable"].astype(str) != "false")]
    sizes = params.groupby(["group", "name"])["numel"].max().sort_values(ascending=False, kind="stable")
    u = tables.updates
    moved = u[u["run"] == run].groupby(["group", "name"])["update_norm"].max()
    moved = set(moved[pd.to_numeric(moved, errors="coerce") > 0].index)
    for wanted in (lambda k: k in moved, lambda k: True):
        for key in sizes.index:
            if key in set(options) and wanted(key):
                return key
    return options[0]


def _reference_largest_parameters(tables, runs, options, count=4):
    frame = tables.tensors.groupby(["run", "group", "name", "module", "kind"], sort=False)["numel"].max()
    frame = frame.reset_index()
    chosen = []
    for run in runs:
        names = frame.loc[frame["run"] == run, ["group", "name"]].drop_duplicates()
        offered_keys = [k for k in names.itertuples(index=False, name=None) if k[1] in set(options)]
        if offered_keys:
            name = _reference_worth_seeing(tables, run, offered_keys)[1]
            if name not in chosen:
                chosen.append(name)
    params = frame[(frame["kind"] == "parameter") & frame["name"].isin(options)]
    for name in params.groupby("name")["numel"].max().sort_values(ascending=False, kind="stable").index:
        if len(chosen) >= count:
            break
        if name not in chosen:
            chosen.append(name)
    return chosen


def _run(at):
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _open(root, view, **state):
    at = app_test(str(root))
    at.session_state["view"] = view
    for key, value in state.items():
        at.session_state[key] = value
    return _run(at)


def _chart_names(at, key):
    """The chart's figure JSON, decoded: plotly escapes non-ASCII (``\\u2014``) unless orjson is installed."""
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}"))
    return json.dumps(json.loads(chart.proto.spec), ensure_ascii=False)


# ``layers\.1[01]\d\.`` leaves run c only frozen layers (100-119): its default falls back to the first offered.
@pytest.mark.parametrize("pattern", [None, r"\.bias$", r"layers\.(3|11)\d\.", r"layers\.1[01]\d\."])
def test_defaults_are_what_the_whole_table_code_chose(wide_root, pattern):
    tables = load_stats(wide_root)
    dataset = StatsDataset(wide_root)
    view = dataset.view(Selection(runs=("a", "b", "c")))
    index = picker_index(view)
    runs = ["a", "b", "c"]
    ctx = ViewContext(config=None, tables=view, fingerprint=dataset.fingerprint, runs=runs, pattern=pattern)
    for run in runs:
        choices = tensor_choices(index, run, pattern)
        options = list(choices.allowed)
        assert worth_seeing(view, run, options, index) == _reference_worth_seeing(tables, run, options)
        assert worth_seeing(tables, run, options) == _reference_worth_seeing(tables, run, options)
    names = tensor_choices(index, None, pattern).allowed_set
    assert largest_parameters(ctx, index, names, 4) == _reference_largest_parameters(tables, runs, names)


def test_worth_seeing_skips_the_largest_tensor_that_never_moves(wide_root):
    view = StatsDataset(wide_root).view()
    index = picker_index(view)
    options = {run: list(tensor_choices(index, run, None).allowed) for run in ("a", "b", "c")}
    # run a: layers.119 (120 + 120 values) never moves; the next largest are layers.118's 119 + 119, the bias first
    # (ties go by name); run b: everything moves, layers.119.bias is first; run c: layers 100-119 are frozen.
    assert worth_seeing(view, "a", options["a"]) == ("", "layers.118.bias")
    assert worth_seeing(view, "b", options["b"]) == ("", "layers.119.bias")
    assert worth_seeing(view, "c", options["c"]) == ("model", "layers.99.bias")  # the file's "model" state_dict
    trainable = load_stats(wide_root).tensors.query("run == 'c' and step == 1").set_index("name")["trainable"]
    assert trainable["layers.99.bias"] == "true" and trainable["layers.100.bias"] == "false"


def test_worth_seeing_finds_a_tensor_that_moves_only_into_the_last_checkpoint(tmp_path):
    # The largest tensors (layers.119, 120 values each) move only from step 10 to 11: they are found in the last
    # batch of updates read (steps 1-2, 3-10, 11), not given up for layers.118.
    _write_wide_run(tmp_path / "late", late=("layers.119.weight", "layers.119.bias"))
    summarize(tmp_path)
    tables = load_stats(tmp_path)
    view = StatsDataset(tmp_path).view()
    options = list(tensor_choices(picker_index(view), "late", None).allowed)
    assert worth_seeing(view, "late", options) == ("", "layers.119.bias") == _reference_worth_seeing(
        tables, "late", options)


def test_choices_are_largest_first_and_offered_with_the_chosen_ones(wide_root):
    index = picker_index(StatsDataset(wide_root).view())
    choices = tensor_choices(index, "a", None)
    # 240 tensors: layers.119's two (120 values each, bias before weight), then layers.118's, ...
    assert len(choices.allowed) == 2 * LAYERS
    assert choices.allowed[:3] == (("", "layers.119.bias"), ("", "layers.119.weight"), ("", "layers.118.bias"))
    shown = offered(choices, [("", "layers.0.weight")])
    # the 200 largest are layers.119 .. layers.20 (100 layers); the chosen layers.0.weight comes after them
    assert len(shown) == OFFERED + 1 and shown[OFFERED - 1] == ("", "layers.20.weight")
    assert shown[-1] == ("", "layers.0.weight")
    names = tensor_choices(index, None, r"\.weight$")
    assert len(names.allowed) == LAYERS and names.allowed[0] == "layers.119.weight"


def test_search_is_a_case_insensitive_regex_or_the_text_itself(wide_root):
    index = picker_index(StatsDataset(wide_root).view())
    assert tensor_choices(index, "a", None, r"LAYERS\.0\.").found == (("", "layers.0.bias"), ("", "layers.0.weight"))
    assert search_pattern("layers.1[").pattern == r"layers\.1\["  # not a regex: searched as text
    assert tensor_choices(index, "a", None, "layers.1[").found == ()
    # the sidebar filter applies before the search: only biases, then those of layers 5, 50..59
    found = tensor_choices(index, None, r"bias", r"\.5\d?\.").found
    assert sorted(found) == sorted(["layers.5.bias", *(f"layers.{i}.bias" for i in range(50, 60))])


def test_scalars_offers_the_largest_and_reaches_any_tensor_by_search(wide_root):
    at = _open(wide_root, View.SCALARS)
    picker = at.multiselect(key="scalars_tensors")
    tables = load_stats(wide_root)
    names = sorted(set(tables.tensors["name"]))
    assert picker.value == _reference_largest_parameters(tables, ["a", "b", "c"], names)  # the default is unchanged
    assert len(picker.options) == OFFERED and "layers.0.weight" not in picker.options
    assert any("240 tensors: showing the 200 largest" in c.value for c in at.caption)
    at.text_input(key="scalars_tensors_search").input(r"layers\.0\.")
    _run(at)
    assert any("2 of 240 tensors match" in c.value for c in at.caption)
    picker = at.multiselect(key="scalars_tensors")
    assert sorted(picker.options) == sorted(["layers.0.bias", "layers.0.weight", *picker.value])
    picker.select("layers.0.weight")
    _run(at)
    assert at.multiselect(key="scalars_tensors").value[-1] == "layers.0.weight"
    assert '"layers.0.weight' in _chart_names(at, "scalars_chart")


def test_histograms_reaches_a_small_tensor_by_search_and_keeps_the_default(wide_root):
    at = _open(wide_root, View.HISTOGRAMS, hist_run="a")
    picker = at.selectbox(key="hist_tensor")
    assert picker.value == ("", "layers.118.bias")  # layers.119 never moves in run a
    assert len(picker.options) == OFFERED and "layers.0.bias" not in picker.options
    at.text_input(key="hist_tensor_search").input("layers.0.bias")
    _run(at)
    picker = at.selectbox(key="hist_tensor")
    assert picker.options == ["layers.0.bias", "layers.118.bias"]  # what the search found, then the chosen one
    picker.set_value(("", "layers.0.bias"))  # (group, name): the picker's own value, shown as its name
    _run(at)
    assert "layers.0.bias — histograms (a)" in _chart_names(at, "hist_chart")


def test_a_chosen_tensor_beyond_the_largest_is_kept_and_offered(wide_root):
    # Health's links set the pickers' state to any tensor, however small.
    at = _open(wide_root, View.HISTOGRAMS, hist_run="b", hist_tensor=("", "layers.3.weight"))
    picker = at.selectbox(key="hist_tensor")
    assert picker.value == ("", "layers.3.weight") and picker.options[-1] == "layers.3.weight"
    assert len(picker.options) == OFFERED + 1
    at = _open(wide_root, View.SCALARS, scalars_tensors=["layers.1.bias"])
    assert at.multiselect(key="scalars_tensors").value == ["layers.1.bias"]


def test_few_tensors_show_no_search_box(tmp_path):
    from _fixtures_app import write_tiny_run

    write_tiny_run(tmp_path / "tiny", [10, 20, 30])
    at = _open(tmp_path, View.SCALARS)
    assert not [t for t in at.text_input if t.key == "scalars_tensors_search"]
    # fc.weight, fc.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked
    assert len(at.multiselect(key="scalars_tensors").options) == 7
