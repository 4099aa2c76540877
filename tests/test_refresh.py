"""``refresh``: plan and execute as one call, the one sequence the CLI and the app use to fill the cache."""

from __future__ import annotations

from _fixtures_runs import write_safetensors_run

from ckptboard.core.executors import LocalExecutor
from ckptboard.core.summarize import refresh

N_TENSORS = 9  # TinyNet's state_dict (see test_summarize.py)


def test_refresh_shows_the_plan_before_reading_and_reports_every_file(tmp_path):
    write_safetensors_run(tmp_path / "run", 3)
    events: list[str] = []

    def executor(work):
        events.append(f"executor {len(work.tasks)}")
        return LocalExecutor(1)

    report = refresh(tmp_path, executor=executor, on_plan=lambda work: events.append(f"plan {work.todo_bytes > 0}"),
                     progress=lambda receipt: events.append(receipt.relpath))
    # one in-process worker finishes the files in step order
    assert events == ["plan True", "executor 3", "run/step_000000.safetensors", "run/step_000002.safetensors",
                      "run/step_000004.safetensors"]
    assert (report.checkpoints, report.computed, report.tensors, report.failures) == (3, 3, 3 * N_TENSORS, [])


def test_refresh_of_an_unchanged_folder_plans_no_work(tmp_path):
    write_safetensors_run(tmp_path / "run", 2)
    refresh(tmp_path)
    plans = []
    report = refresh(tmp_path, on_plan=plans.append)
    assert [len(p.tasks) for p in plans] == [0]
    assert (report.checkpoints, report.cached, report.computed) == (2, 2, 0)
