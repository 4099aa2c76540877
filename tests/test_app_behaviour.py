"""The app's behaviour beyond drawing: first-open progress, refresh, error cards, UI states for missing input,
the sidebar filters, ROOT confinement of typed paths, and Health leading to a tensor's charts."""

from __future__ import annotations

import importlib
import os
import time

import pytest

from _fixtures_app import app_test, write_tiny_run
from ckptboard.core.summarize import summarize
from ckptboard.dashboard.views import View


def _run(at):
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _metric(at, label: str) -> str:
    return {m.label: m.value for m in at.metric}[label]


@pytest.fixture
def tiny_root(tmp_path):
    """One run ``tiny/`` of three checkpoints at steps 10, 20, 30."""
    root = tmp_path / "root"
    write_tiny_run(root / "tiny", [10, 20, 30])
    return root


def test_first_open_summarizes_with_progress_then_reads_the_cache(tiny_root):
    at = _run(app_test(str(tiny_root)))
    assert [s.label for s in at.status] and at.status[0].label.startswith("Read 3 new checkpoint(s)")
    assert _metric(at, "Checkpoints") == "3"
    again = _run(app_test(str(tiny_root)))  # a second session: everything is cached, no progress shown
    assert not again.status
    assert _metric(again, "Checkpoints") == "3"


def test_empty_cache_opens_its_status_box_before_anything_is_read(tmp_path):
    # An empty ROOT plans no work, so only the box opened up front (before torch is imported and ROOT listed,
    # the seconds a first paint used to stay blank) can be there; it closes saying so.
    root = tmp_path / "empty"
    root.mkdir()
    at = _run(app_test(str(root)))
    assert [s.label for s in at.status] == ["No checkpoints to read"]
    assert "No checkpoints under" in at.info[0].value


def test_new_session_on_a_filled_cache_draws_then_reads_what_is_new(tiny_root, tmp_path):
    summarize(tiny_root)  # e.g. `ckptboard summarize` ran before the dashboard
    write_tiny_run(tmp_path / "later", [10, 20, 30, 40])
    (tmp_path / "later" / "step_40.pt").rename(tiny_root / "tiny" / "step_40.pt")
    at = _run(app_test(str(tiny_root)))  # draws the 3 cached checkpoints, then reads step 40 and reruns
    assert _metric(at, "Checkpoints") == "4"


def test_new_session_on_an_unchanged_cache_skips_the_full_look(tiny_root, monkeypatch):
    # The full look (summarize.refresh) imports torch: seconds a fresh server's first chart used to wait for.
    summarize(tiny_root)
    summarize_module = importlib.import_module("ckptboard.core.summarize")  # the package re-exports the function
    looks = []
    monkeypatch.setattr(summarize_module, "refresh", lambda *a, **k: looks.append(a))
    at = _run(app_test(str(tiny_root)))
    assert _metric(at, "Checkpoints") == "3" and looks == []


_NO_TORCH_PROBE = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=120)
at.session_state["app_argv"] = [sys.argv[2]]
for view in sys.argv[3:]:
    at.session_state["view"] = view
    at.run()
    assert not at.exception, (view, [e.value for e in at.exception])
    assert "torch" not in sys.modules, f"{view} imported torch"
"""


@pytest.mark.slow
def test_a_fresh_server_draws_every_view_but_a_models_flops_without_importing_torch(tmp_path):
    # torch's import is seconds of a first chart or a first view switch; only the FLOPs of a model may pay it.
    import subprocess
    import sys

    from _fixtures_app import APP, copy_samples

    root = copy_samples(tmp_path / "samples")
    summarize(root)
    views = [View.OVERVIEW, View.TENSORS, View.SCALARS, View.HISTOGRAMS, View.BATCHNORM, View.SIZE_FLOPS,
             View.COMPARE, View.HEALTH, View.SPECTRAL, View.GRADIENTS]
    done = subprocess.run([sys.executable, "-c", _NO_TORCH_PROBE, str(APP), str(root), *map(str, views)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cache_dir_keeps_root_untouched(tiny_root, tmp_path):
    at = _run(app_test(str(tiny_root), "--cache-dir", str(tmp_path / "cache")))
    assert _metric(at, "Checkpoints") == "3"
    assert len(list((tmp_path / "cache" / "checkpoints").glob("*.parquet"))) == 3  # one commit record per checkpoint
    assert not (tiny_root / ".ckptboard").exists()


def test_refresh_reads_only_the_new_checkpoint(tiny_root, tmp_path):
    at = _run(app_test(str(tiny_root)))
    write_tiny_run(tmp_path / "later", [10, 20, 30, 40])  # the run continued: step 40 lands in ROOT
    (tmp_path / "later" / "step_40.pt").rename(tiny_root / "tiny" / "step_40.pt")
    _run(at)  # a plain rerun does not look for new files
    assert _metric(at, "Checkpoints") == "3"
    at.button(key="refresh").click()
    _run(at)
    assert _metric(at, "Checkpoints") == "4"
    assert at.status[0].label.startswith("Read 1 new checkpoint(s)")


def test_auto_refresh_picks_up_a_new_checkpoint_when_its_interval_has_passed(tiny_root, tmp_path):
    at = _run(app_test(str(tiny_root)))
    at.selectbox(key="auto_refresh").set_value("10 s")
    _run(at)  # read just now: the interval has not passed, nothing is summarized
    write_tiny_run(tmp_path / "later", [10, 20, 30, 40])
    (tmp_path / "later" / "step_40.pt").rename(tiny_root / "tiny" / "step_40.pt")
    _run(at)
    assert _metric(at, "Checkpoints") == "3"
    at.session_state["loaded_at"] = time.time() - 11  # as if 11 s had passed since the last read
    _run(at)
    assert _metric(at, "Checkpoints") == "4"


def test_unreadable_file_gets_an_error_card_and_the_rest_works(tiny_root):
    bad = tiny_root / "tiny" / "step_99.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    os.utime(bad, (time.time() - 3600, time.time() - 3600))  # old: broken, not still being written
    at = _run(app_test(str(tiny_root)))
    assert any("step_99.pt" in e.value for e in at.error)
    assert _metric(at, "Unreadable files") == "1"
    assert _metric(at, "Checkpoints") == "3"
    at.session_state["view"] = View.SCALARS
    _run(at)
    assert at.get("plotly_chart")


def test_file_still_being_written_is_announced_not_failed(tiny_root):
    (tiny_root / "tiny" / "step_99.pt").write_bytes(b"PK\x03\x04 half written")  # fresh mtime
    at = _run(app_test(str(tiny_root)))
    assert not at.error
    assert any("tiny/step_99.pt" in i.value and "still being written" in i.value for i in at.info)


def test_missing_root_is_an_error_message_not_an_exception(tmp_path):
    at = _run(app_test(str(tmp_path / "nope")))
    assert any("does not exist" in e.value for e in at.error)
    assert any("ckptboard serve ROOT" in i.value for i in at.info)


def test_empty_root_is_an_info_state(tmp_path):
    at = _run(app_test(str(tmp_path)))
    assert any("No checkpoints under" in i.value for i in at.info)


def test_no_run_chosen_is_an_info_state(tiny_root):
    at = _run(app_test(str(tiny_root)))
    at.multiselect(key="sidebar_runs").set_value([])
    _run(at)
    assert any("at least one run" in i.value for i in at.info)


def test_sidebar_filter_narrows_the_tensor_pickers(tiny_root):
    at = app_test(str(tiny_root))
    at.session_state["view"] = View.SCALARS
    _run(at)
    at.text_input(key="sidebar_filter").input(r"^bn\.")
    _run(at)
    options = at.multiselect(key="scalars_tensors").options
    # bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked
    assert sorted(options) == sorted(["bn.bias", "bn.num_batches_tracked", "bn.running_mean", "bn.running_var",
                                      "bn.weight"])  # fmt: skip


def test_bad_regex_is_a_sidebar_error(tiny_root):
    at = _run(app_test(str(tiny_root)))
    at.text_input(key="sidebar_filter").input("conv[")
    _run(at)
    assert any("not a regular expression" in e.value for e in at.sidebar.error)


def test_step_range_restricts_the_checkpoints(tiny_root):
    at = _run(app_test(str(tiny_root)))
    assert at.slider(key="sidebar_step_range").value == (10, 30)
    at.slider(key="sidebar_step_range").set_range(20, 30)
    _run(at)
    assert _metric(at, "Checkpoints") == "2"  # steps 20 and 30


@pytest.mark.parametrize(
    "typed, refusal",
    [
        ("../outside.py:Net", "outside ROOT"),
        ("/etc/hosts.py:Net", "outside ROOT"),
        ("sub/../../outside.py:Net", "outside ROOT"),
        ("os:getcwd", "only a .py file under ROOT"),  # a module SPEC would import (and call) anything installed
    ],
)
def test_model_spec_typed_in_the_app_must_be_a_file_under_root(tiny_root, typed, refusal):
    (tiny_root.parent / "outside.py").write_text("raise SystemExit('must never be imported')\n")
    at = app_test(str(tiny_root))
    at.session_state["view"] = View.SIZE_FLOPS
    _run(at)
    at.text_input(key="flops_model").input(typed)
    at.text_input(key="flops_input_shape").input("1,3")
    _run(at)
    assert any(refusal in e.value for e in at.error), [e.value for e in at.error]


def test_health_finding_opens_its_tensor_in_scalars(tiny_root):
    at = app_test(str(tiny_root))
    at.session_state["view"] = View.HEALTH
    _run(at)
    finding = at.selectbox(key="health_finding")
    # the options are the findings' labels; fc.bias never moves (write_tiny_run): an unchanged-across-run finding
    index = next(i for i, label in enumerate(finding.options) if "unchanged-across-run" in label and "fc.bias" in label)
    finding.set_value(index)
    _run(at)
    at.button(key="health_open_scalars").click()
    _run(at)
    assert at.segmented_control(key="view").value == View.SCALARS
    assert at.multiselect(key="scalars_tensors").value == ["fc.bias"]
    assert at.selectbox(key="scalars_stat").value == "update_norm"
    assert at.get("plotly_chart")
