"""
A worker killed with ``kill -9`` right after the service answered the submit POST, before the task
recorded the request id: the retry must not pay again silently. The first try runs ``dag.test()``
in a child process that sends itself SIGKILL at exactly that point; the retry runs in this process
on the same DAG run (same task instance, same task state store), as the scheduler would run it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from conftest import DAGS_FOLDER

from .harness import DAG_FILE, rerun_tasks, run_dag, submissions_by_prompt

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import FaultEmulator

# A child Airflow process per test, on top of the session database: slower than one dag.test().
pytestmark = [pytest.mark.usefixtures("airflow_db"), pytest.mark.timeout(900)]

# The DAGs' prompts (tests/dags/cerebraform_fault_dags.py).
KILL_PROMPT = "killed: a moth at a lamp"
FORGOTTEN_PROMPT = "forgotten: a paper lantern"
FIRST_TRY = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("killed_dags", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = next(v for v in vars(module).values() if getattr(v, "dag_id", None) == sys.argv[2])
dag.test()
"""


def records(folder: Path) -> Path:
    """A folder for the failures the DAG's callback records (``rerun_tasks`` does not create it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def kill_the_first_try(dag_id: str) -> str:
    """Run the first try in a child that is killed after the POST's answer; return the DAG run's id."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    env = {**os.environ, "CEREBRAFORM_FAULT_KILL_AFTER_SUBMIT": "1"}
    child = subprocess.run(
        [sys.executable, "-c", FIRST_TRY, str(DAGS_FOLDER / DAG_FILE), dag_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    with create_session() as session:
        (dag_run,) = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id))
        (ti,) = session.scalars(select(TaskInstance).where(TaskInstance.run_id == dag_run.run_id))
        assert ti.state == TaskInstanceState.RUNNING  # the try died with its worker
        # What the scheduler does with a task whose worker stopped heartbeating.
        ti.state = TaskInstanceState.FAILED
        return dag_run.run_id


def test_a_retry_after_a_kill_between_answer_and_record_does_not_pay_again(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: SIGKILL of the worker after the POST was answered (the task is created and charged) and
    before its request id was recorded. Expected with the default ``on_uncertain_submission="fail"``:
    the retry finds the intent without an id, submits nothing and fails with
    ``CerebraformSubmissionUncertainError`` saying so; the emulator holds one task for the prompt.
    """
    dag_id = "cerebraform_fault_killed_submit_fail"
    run_id = kill_the_first_try(dag_id)
    assert submissions_by_prompt(fault_emulator.admin)[KILL_PROMPT] == 1  # the first try paid

    run = rerun_tasks(dag_id, run_id, records(tmp_path / "records"), monkeypatch, select=lambda ti: True)

    assert run.task("submit").state == "failed"
    (failure,) = run.failures_of("submit")
    assert failure["type"] == "CerebraformSubmissionUncertainError", failure
    assert "has no request id for it" in failure["message"]
    assert "on_uncertain_submission='resubmit'" in failure["message"]
    assert submissions_by_prompt(fault_emulator.admin)[KILL_PROMPT] == 1  # no second payment


def test_resubmit_is_the_users_explicit_choice_to_pay_again(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same kill with ``on_uncertain_submission="resubmit"``: the retry submits again, as asked."""
    dag_id = "cerebraform_fault_killed_submit_resubmit"
    run_id = kill_the_first_try(dag_id)

    run = rerun_tasks(dag_id, run_id, records(tmp_path / "records"), monkeypatch, select=lambda ti: True)

    assert run.task("submit").state == "success", run.failures
    assert submissions_by_prompt(fault_emulator.admin)[KILL_PROMPT] == 2


def test_a_remembered_request_the_service_no_longer_knows_is_forgotten_not_a_404_loop(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: the first try submits and records the request id, then fails; the service forgets the
    task (emulator reset). Expected: the retry's status check gets 404, forgets the id (a warning
    says so) and, under the default policy, fails as an uncertain submission without paying; with
    the policy set to ``resubmit`` through the templated Variable, the next clear submits once.
    """
    dag_id = "cerebraform_fault_forgotten_request"
    first = run_dag(dag_id, tmp_path / "first", monkeypatch)
    assert first.task("submit").state == "failed"
    fault_emulator.reset()  # the service no longer knows the request

    second = rerun_tasks(
        dag_id, first.run_id, records(tmp_path / "second"), monkeypatch, select=lambda ti: True
    )
    (failure,) = second.failures_of("submit")
    assert failure["type"] == "CerebraformSubmissionUncertainError", failure
    assert "no longer knows it (HTTP 404)" in failure["message"]
    assert "CerebraformNotFoundError" not in failure["mro"]
    assert fault_emulator.admin.stats()["submissions"]["total"] == 0

    monkeypatch.setenv("AIRFLOW_VAR_CEREBRAFORM_ON_UNCERTAIN_SUBMISSION", "resubmit")
    third = rerun_tasks(
        dag_id, first.run_id, records(tmp_path / "third"), monkeypatch, select=lambda ti: True
    )
    assert third.task("submit").state == "success", third.failures
    assert submissions_by_prompt(fault_emulator.admin)[FORGOTTEN_PROMPT] == 1
