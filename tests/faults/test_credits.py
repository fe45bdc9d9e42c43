"""
Credits running out in the middle of a mapped run, then topped up: what is paid, what fails, and
what a re-run pays again, through the real operators (``dag.test()`` and the same run re-driven).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from .harness import (
    FAULT_KEY,
    LEDGER,
    media_files,
    partial_files,
    record_emulator,
    rerun_tasks,
    run_dag,
    submissions_by_prompt,
)

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import FaultEmulator

pytestmark = pytest.mark.usefixtures("airflow_db")

PROMPTS = ["credits: one apple", "credits: two pears", "credits: three plums", "credits: four figs"]
PAID = 2


def test_credits_run_out_mid_mapped_run_then_a_rerun_pays_only_for_the_rest(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: the key has credits for 2 images; a mapped generate task asks for 4 (one credit each).

    Expected, first run: 2 tasks are paid and store their image; the other 2 fail at once with
    ``CerebraformInsufficientCreditsError`` carrying the API's 402 message, and nothing is created
    or charged for them.

    Then the account is topped up, and:

    * clearing the 2 failed task instances and running the same DAG run again pays for exactly those
      2 (each prompt has now been submitted once);
    * clearing all 4 task instances of that run and running it again pays nothing: each task
      instance finds its submission in the task state store (kept across clears and tries, scoped
      to dag run, task and map index), reconnects to the finished job and stores its media again;
    * a new DAG run of the same DAG is a new set of task instances with an empty state store: it
      submits (and pays for) all 4 again. The idempotency scope is one task instance of one DAG run,
      not the prompt; this is by design and documented.
    """
    fault_emulator.admin.set_credits(FAULT_KEY, PAID)
    output = tmp_path / "out"
    records = tmp_path / "records"
    first = run_dag("cerebraform_fault_credits", records, monkeypatch, output=f"file://{output}")

    mapped = first.mapped("generate")
    paid = [task for task in mapped if task.state == "success"]
    refused = [task for task in mapped if task.state == "failed"]
    assert len(paid) == PAID and len(refused) == len(PROMPTS) - PAID, first.failures
    for task in refused:
        failure = first.failure("generate", task.map_index)
        assert failure["type"] == "CerebraformInsufficientCreditsError", failure
        assert "HTTP 402" in failure["message"] and "credits" in failure["message"].lower()
        LEDGER.tasks_failed_as_expected += 1
    assert sum(submissions_by_prompt(fault_emulator.admin).values()) == PAID
    assert fault_emulator.credits() == 0
    assert len(media_files(output / "credits")) == PAID

    # Top up, clear only the failed task instances, run the same DAG run again.
    fault_emulator.admin.set_credits(FAULT_KEY, 100)
    refused_indexes = {task.map_index for task in refused}
    second = rerun_tasks(
        "cerebraform_fault_credits",
        first.run_id,
        records,
        monkeypatch,
        lambda ti: ti.task_id == "generate" and ti.map_index in refused_indexes,
    )
    assert second.state == "success", second.failures
    assert [task.state for task in second.mapped("generate")] == ["success"] * len(PROMPTS)
    assert all(second.task("generate", index).try_number == 2 for index in refused_indexes)
    assert submissions_by_prompt(fault_emulator.admin) == dict.fromkeys(PROMPTS, 1)
    assert fault_emulator.credits() == 100 - (len(PROMPTS) - PAID)
    assert len(media_files(output / "credits")) == len(PROMPTS)

    # Clear every task instance of that run, including the paid ones: nothing is paid again.
    third = rerun_tasks(
        "cerebraform_fault_credits", first.run_id, records, monkeypatch, lambda ti: ti.task_id == "generate"
    )
    assert [task.state for task in third.mapped("generate")] == ["success"] * len(PROMPTS)
    assert {task.map_index: task.try_number for task in third.mapped("generate")} == {
        task.map_index: 3 if task.map_index in refused_indexes else 2 for task in mapped
    }  # every task instance ran again
    assert submissions_by_prompt(fault_emulator.admin) == dict.fromkeys(PROMPTS, 1)
    assert fault_emulator.credits() == 100 - (len(PROMPTS) - PAID)
    for task in third.mapped("generate"):
        (entry,) = task.return_value
        assert entry["request_id"] in {t.return_value[0]["request_id"] for t in second.mapped("generate")}

    # A new DAG run is new task instances: it pays for every prompt again.
    fresh = run_dag("cerebraform_fault_credits", records, monkeypatch, output=f"file://{output}")
    assert fresh.run_id != first.run_id
    assert [task.state for task in fresh.mapped("generate")] == ["success"] * len(PROMPTS)
    assert submissions_by_prompt(fault_emulator.admin) == dict.fromkeys(PROMPTS, 2)
    assert partial_files(output) == []
    record_emulator(fault_emulator.admin, dag_runs_per_prompt=2)
    LEDGER.faults_injected["submit:insufficient_credits"] += len(refused)
