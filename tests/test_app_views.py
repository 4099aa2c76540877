"""Every view of the Streamlit app on a copy of ``sample_ckpts/``: no exception, the expected widgets by key."""

from __future__ import annotations

import pytest

from _fixtures_app import app_test, copy_samples
from ckptboard.core.summarize import summarize
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
    View.BATCHNORM: [("selectbox", "bn_run"), ("segmented_control", "bn_stat"), ("selectbox", "bn_layer")],
    View.SIZE_FLOPS: [("selectbox", "size_checkpoint"), ("segmented_control", "size_chart"),
                      ("text_input", "flops_model"), ("text_input", "flops_input_shape")],
    View.COMPARE: [("segmented_control", "compare_mode"), ("selectbox", "compare_a"), ("selectbox", "compare_b"),
                   ("slider", "compare_top")],
    View.HEALTH: [("number_input", "health_dead_var"), ("number_input", "health_explode")],
}  # fmt: skip


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """A copy of sample_ckpts with its cache already summarized (the first-open path has its own test)."""
    root = copy_samples(tmp_path_factory.mktemp("app") / "samples")
    summarize(root)
    return root



def _open(root, view: View):
    at = app_test(str(root))
    at.session_state["view"] = view
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_app_opens_on_overview_with_sidebar(samples):
    at = app_test(str(samples))
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


@pytest.mark.parametrize("view", list(View), ids=lambda v: v.name.lower())
def test_every_view_renders_with_its_widgets(samples, view):
    at = _open(samples, view)
    for kind, key in EXPECTED[view]:
        widget = getattr(at, kind)(key=key)
        assert widget is not None, f"{view}: no {kind} {key!r}"
    if view not in (View.HEALTH, View.OVERVIEW):
        assert at.get("plotly_chart"), f"{view} draws at least one chart"
