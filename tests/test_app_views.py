"""Every view of the Streamlit app on a copy of ``sample_ckpts/``: no exception, the expected widgets by key."""

from __future__ import annotations

import pytest

from _fixtures_app import app_test, summarized_samples
from ckptboard.dashboard.views import View

SIDEBAR = [("multiselect", "sidebar_runs"), ("text_input", "sidebar_filter"), ("slider", "sidebar_depth"),
           ("slider", "sidebar_step_range"), ("button", "refresh"), ("selectbox", "auto_refresh")]

# view -> (widget kind, key) the view must show on sample_ckpts
EXPECTED = {
    View.OVERVIEW: [("selectbox", "overview_run"), ("selectbox", "overview_checkpoint")],
    View.TENSORS: [("selectbox", "tensors_checkpoint"), ("multiselect", "tensors_kinds"),
                   ("selectbox", "tensors_module"), ("segmented_control", "tensors_metric")],
    View.SCALARS: [("selectbox", "scalars_stat"), ("segmented_control", "scalars_by"),
                   ("multiselect", "scalars_tensors"), ("slider", "scalars_smoothing"), ("toggle", "scalars_log_y")],
    View.HISTOGRAMS: [("selectbox", "hist_run"), ("selectbox", "hist_tensor"), ("segmented_control", "hist_mode")],
    View.BATCHNORM: [("selectbox", "bn_run"), ("segmented_control", "bn_stat"), ("multiselect", "bn_layers"),
                     ("selectbox", "bn_layer")],
    View.SIZE_FLOPS: [("selectbox", "size_checkpoint"), ("segmented_control", "size_chart"),
                      ("text_input", "flops_model"), ("text_input", "flops_input_shape")],
    View.COMPARE: [("segmented_control", "compare_mode"), ("selectbox", "compare_a"), ("selectbox", "compare_b"),
                   ("slider", "compare_top")],
    View.HEALTH: [("number_input", "health_dead_var"), ("number_input", "health_explode")],
    View.SPECTRAL: [("selectbox", "spectral_metric"), ("multiselect", "spectral_layers")],
    View.GRADIENTS: [("selectbox", "grad_metric"), ("segmented_control", "grad_by"), ("multiselect", "grad_tensors"),
                     ("toggle", "grad_log_y"), ("selectbox", "grad_hist_run"), ("selectbox", "grad_hist_tensor")],
}  # fmt: skip


# Every app of this module summarises with --spectral full, as the samples' cache was: the server's state is shared
# by the module's sessions, so one session without it would leave the others a cache without spectral rows.
SPECTRAL = ("--spectral", "full")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """A copy of sample_ckpts with its cache already summarized (the first-open path has its own test)."""
    return summarized_samples(tmp_path_factory, tmp_path_factory.mktemp("app") / "samples")



def _chart(at, key: str):
    """The Plotly chart drawn with ``key`` (its element id ends with the key), or None."""
    return next((c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")), None)


def _open(root, view: View):
    at = app_test(str(root), *SPECTRAL)
    at.session_state["view"] = view
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_app_opens_on_overview_with_sidebar(samples):
    at = app_test(str(samples), *SPECTRAL)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.segmented_control(key="view").value == View.OVERVIEW
    for kind, key in SIDEBAR:
        getattr(at.sidebar, kind)(key=key)  # KeyError when the sidebar lacks it
    # three runs of 16 checkpoints (make_samples.py: CHECKPOINTS_PER_RUN = 16)
    assert sorted(at.multiselect(key="sidebar_runs").value) == ["adamw_lr1e-2", "adamw_lr1e-3", "sgd_safetensors"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Checkpoints"] == "48"  # 3 × 16
    assert at.get("plotly_chart"), "the runs overview chart is drawn"


def test_overview_table_shows_each_file_within_its_run_in_the_columns_that_fit(samples):
    at = _open(samples, View.OVERVIEW)
    table = at.dataframe[0]  # a display-only table has no widget key in the element tree
    # the byte split and the optimizer line are left to Size & FLOPs and the metadata (1440 px with the sidebar)
    assert list(table.proto.column_order) == ["run", "file", "step", "step_source", "format", "size", "n_tensors",
                                              "n_parameters", "n_trainable", "n_frozen", "n_buffers"]
    frame = table.value
    assert frame["file"].iloc[0] == "epoch=0-step=30.ckpt" and frame["run"].iloc[0] == "adamw_lr1e-2"
    at.selectbox(key="overview_run").set_value("sgd_safetensors").run()
    assert "run" not in at.dataframe[0].proto.column_order  # one run: no run column


@pytest.mark.parametrize("view", list(View), ids=lambda v: v.name.lower())
def test_every_view_renders_with_its_widgets(samples, view):
    at = _open(samples, view)
    for kind, key in EXPECTED[view]:
        widget = getattr(at, kind)(key=key)
        assert widget is not None, f"{view}: no {kind} {key!r}"
    if view not in (View.HEALTH, View.OVERVIEW):
        assert at.get("plotly_chart"), f"{view} draws at least one chart"


def test_flops_from_a_model_file_typed_under_root(samples):
    at = _open(samples, View.SIZE_FLOPS)
    at.text_input(key="flops_model").input("model.py:SmallCNN")  # sample_ckpts/model.py, relative to ROOT
    at.text_input(key="flops_input_shape").input("1,3,32,32")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert _chart(at, "flops_chart") is not None


def test_scalars_by_module_and_log_y(samples):
    at = _open(samples, View.SCALARS)
    at.segmented_control(key="scalars_by").set_value("Modules").run()
    # SmallCNN's modules at any depth: conv1..3, bn1..3, head (make_samples.py / model.py)
    assert sorted(at.multiselect(key="scalars_modules").options) == [
        "bn1", "bn2", "bn3", "conv1", "conv2", "conv3", "head"
    ]
    at.toggle(key="scalars_log_y").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert _chart(at, "scalars_chart") is not None


def test_compare_two_runs_at_a_step(samples):
    at = _open(samples, View.COMPARE)
    at.segmented_control(key="compare_mode").set_value("Two runs at a step").run()
    assert not at.exception, [e.value for e in at.exception]
    # every run saved at steps 30, 60, …, 480 (16 checkpoints, 30 steps apart)
    assert at.selectbox(key="compare_step").value == 480
    assert _chart(at, "compare_chart") is not None


def test_views_read_only_what_they_draw(samples, monkeypatch):
    """Histograms are read for one tensor of one run; no view reads the tensors table with all its columns and no
    tensor or checkpoint filter (Compare reads its two checkpoints' rows)."""
    import streamlit as st

    from ckptboard.core.dataset import Selection, StatsDataset

    reads = []
    real = StatsDataset.read
    monkeypatch.setattr(StatsDataset, "read", lambda self, table, selection=Selection(), columns=None, **kw: (
        reads.append((str(table), selection, columns)) or real(self, table, selection, columns, **kw)))
    whole_tensors = set()
    for view in View:
        st.cache_resource.clear()  # shared reads of an earlier test or view would hide this view's own
        reads.clear()
        _open(samples, view)
        histograms = [s for t, s, _ in reads if t == "histograms"]
        assert all(len(s.names) == 1 and len(s.runs) == 1 for s in histograms), view
        if any(t == "tensors" and c is None and s.columns is None and s.names is None and s.checkpoints is None
               for t, s, c in reads):
            whole_tensors.add(view)
    assert whole_tensors == set()


def test_compare_exact_diff_of_two_runs(samples):
    at = _open(samples, View.COMPARE)
    at.segmented_control(key="compare_mode").set_value("Two runs at a step").run()
    at.toggle(key="compare_exact").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Matched"] == "21"  # SmallCNN's 21 tensors, by the same names in both runs
    assert at.selectbox(key="compare_exact_tensor").value is not None
    assert _chart(at, "compare_exact_hist") is not None


def test_spectral_view_draws_alpha_with_weightwatchers_bands(samples):
    at = _open(samples, View.SPECTRAL)
    assert at.selectbox(key="spectral_metric").value == "alpha"  # summarized with --spectral full
    chart = _chart(at, "spectral_chart")
    assert chart is not None and "WeightWatcher: well-trained" in chart.proto.spec
    assert any("WeightWatcher's published reading" in c.value for c in at.caption)


def test_gradients_view_by_module_states_the_approximation(samples):
    at = _open(samples, View.GRADIENTS)
    assert any("exponential moving averages" in c.value for c in at.caption)
    at.segmented_control(key="grad_by").set_value("Modules").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect(key="grad_modules").value
    assert _chart(at, "grad_chart") is not None and _chart(at, "grad_hist_chart") is not None


def test_overview_counts_parameters_in_the_query_as_from_every_tensor_row(samples):
    from ckptboard.core.dataset import StatsDataset
    from ckptboard.core.load import load_stats
    from ckptboard.dashboard.figures.overview import runs_overview_figure
    from ckptboard.dashboard.views.overview import _runs_figure

    queried, whole = _runs_figure(StatsDataset(samples).view()), runs_overview_figure(load_stats(samples))
    assert [list(t.y) for t in queried.data] == [list(t.y) for t in whole.data]
    # every sample checkpoint: 3 (top-level) + conv1 432 + bn1 32 + conv2 4608 + bn2 64 + conv3 9216 + bn3 64
    # + head 132 = 14,551 parameter elements
    assert {y for t in queried.data if t.yaxis == "y2" for y in t.y} == {14551.0}


def test_compare_reads_two_checkpoints_and_finds_what_the_whole_tables_find(samples):
    import pandas as pd

    from ckptboard.core.dataset import StatsDataset
    from ckptboard.core.health import compare_checkpoints
    from ckptboard.core.load import load_stats
    from ckptboard.dashboard.views.compare import _compare

    view, whole = StatsDataset(samples).view(), load_stats(samples)
    first, second, last = "adamw_lr1e-2/epoch=0-step=30.ckpt", "adamw_lr1e-2/epoch=1-step=60.ckpt", \
        "adamw_lr1e-2/epoch=15-step=480.ckpt"
    # consecutive (the update row), against the first (dist_from_first), neither (the lower bound), across runs
    for a, b in [(first, second), (first, last), (second, last), (last, "sgd_safetensors/checkpoint_000480.safetensors")]:
        pd.testing.assert_frame_equal(_compare(view, a, b).changes, compare_checkpoints(whole, a, b).changes)


def test_health_from_candidate_rows_finds_what_the_whole_tables_find(samples):
    import pandas as pd

    from ckptboard.core.dataset import StatsDataset
    from ckptboard.core.health import LARGEST_UPDATES, health_table
    from ckptboard.core.health_prefilter import health_rows
    from ckptboard.core.load import load_stats
    from ckptboard.dashboard.views.health import _HEALTH_COLUMNS

    view, whole = StatsDataset(samples).view().narrow(columns=_HEALTH_COLUMNS), load_stats(samples)
    for factor in (1.5, 10.0):  # a low threshold makes exploding-norm fire on the samples
        expected = health_table(whole, explode_factor=factor)
        assert len(expected), "the samples must hold findings for the comparison to mean anything"
        pd.testing.assert_frame_equal(health_table(view, explode_factor=factor), expected)
    rows = health_rows(view, 10.0, LARGEST_UPDATES)
    assert len(rows.tensors) < len(whole.tensors) and len(rows.updates) < len(whole.updates)
