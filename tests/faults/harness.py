"""
Running the fault DAGs (``tests/dags/cerebraform_fault_dags.py``) with Airflow's own machinery and
reading back what Airflow and the emulator recorded.

``run_dag`` is one ``dag.test()``. ``rerun_tasks`` clears chosen task instances of an existing run and
drives that same run again with the loop ``dag.test()`` itself uses (``dag.test()`` cannot: it deletes
any earlier run of the same logical date, task state store included). The ledger adds up the figures
the fault suite reports at the end of the session.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cerebraform_dagtest import DagOutcome, collect_outcome
from cerebraform_dagtest import run_dag as run_test_dag
from conftest import AIRFLOW_HOME, load_dag
from conftest import wait_for as shared_wait_for

from airflow_provider_cerebraform.emulator.airflow_home import run_task_like_dag_test
from airflow_provider_cerebraform.version_compat import scheduler_dag

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest

    from airflow_provider_cerebraform.emulator import EmulatorAdmin

#: The key every fault test uses: distinctive, so that any occurrence anywhere is a leak.
FAULT_KEY = "cfk-live-FAULTSUITE-7e1d94b2c0a35f68-DO-NOT-LOG"
DAG_FILE = "test_dags/cerebraform_fault_dags.py"
RECORD_DIR_ENV = "CEREBRAFORM_FAULT_RECORD_DIR"
#: What a user would see in a failure that escaped the typed errors.
UNTYPED = ("KeyError", "TypeError", "AttributeError", "IndexError", "ValueError", "JSONDecodeError")


@dataclass
class Ledger:
    """Figures of the whole fault suite, printed at the end of the session."""

    faults_injected: Counter[str] = field(default_factory=Counter)
    dag_runs: int = 0
    tasks_completed: int = 0
    tasks_failed_as_expected: int = 0
    duplicates: int = 0
    partial_files: int = 0
    files_verified: int = 0
    rate_limited: int = 0
    rate_limited_successes: int = 0
    key_hits: int | None = None
    scanned: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    used: bool = False

    def lines(self) -> list[str]:
        injected = sum(self.faults_injected.values())
        kinds = ", ".join(f"{name} {count}" for name, count in sorted(self.faults_injected.items()))
        per_success = (
            f"{self.rate_limited / self.rate_limited_successes:.2f}" if self.rate_limited_successes else "n/a"
        )
        hits = "not scanned" if self.key_hits is None else str(self.key_hits)
        scanned = ", ".join(f"{name} {count}" for name, count in sorted(self.scanned.items()))
        return [
            f"faults injected: {injected} ({kinds})",
            f"dag runs: {self.dag_runs}; tasks completed: {self.tasks_completed}; "
            f"expected failures checked (typed error and message): {self.tasks_failed_as_expected}",
            f"duplicate submissions: {self.duplicates}; partial files: {self.partial_files}; "
            f"files verified by sha256: {self.files_verified}",
            f"429 answers: {self.rate_limited} for {self.rate_limited_successes} successes "
            f"({per_success} per success)",
            f"API key hits in logs, captured output, metadata DB and outputs: {hits} (scanned: {scanned})",
            f"fault suite wall time: {time.monotonic() - self.started:.1f} s",
        ]


LEDGER = Ledger()


def record_emulator(admin: EmulatorAdmin, *, dag_runs_per_prompt: int = 1) -> dict[str, Any]:
    """
    Add the emulator's injected faults and any duplicate submission to the ledger; return its stats.

    :param dag_runs_per_prompt: how many separate DAG runs asked for each prompt on purpose (each
        may pay once); more submissions of a prompt than that are duplicates.
    """
    stats = admin.stats()
    LEDGER.faults_injected.update(stats["faults_injected"])
    prompts = Counter(task["prompt"] for task in stats["tasks"])
    LEDGER.duplicates += sum(max(0, count - dag_runs_per_prompt) for count in prompts.values())
    return stats


def submissions_by_prompt(admin: EmulatorAdmin) -> Counter[str]:
    return Counter(task["prompt"] for task in admin.tasks())


def partial_files(folder: Path) -> list[Path]:
    found = [path for path in folder.rglob("*") if path.name.endswith(".partial")] if folder.exists() else []
    LEDGER.partial_files += len(found)
    return found


def media_files(folder: Path) -> list[Path]:
    """Every stored file under ``folder`` but manifests."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".manifest.json"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_dag(dag_id: str, record_dir: Path, monkeypatch: pytest.MonkeyPatch, **conf: Any) -> DagOutcome:
    """Load ``dag_id`` from the session's DAG folder and run it once with ``dag.test()``."""
    return _account(
        run_test_dag(dag_id, record_dir, monkeypatch, dag_file=DAG_FILE, record_env=RECORD_DIR_ENV, **conf)
    )


def rerun_tasks(
    dag_id: str,
    run_id: str,
    record_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    select: Callable[[Any], bool],
    *,
    dag_file: str = DAG_FILE,
    record_env: str = RECORD_DIR_ENV,
) -> DagOutcome:
    """
    Clear the task instances of ``run_id`` that ``select`` picks (as the UI's Clear does: same task
    instance, next try number, task state store kept) and run the same DAG run again with the loop
    of ``dag.test()``.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import clear_task_instances
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select as sql_select

    monkeypatch.setenv(record_env, str(record_dir))
    dag = load_dag(dag_file, dag_id)
    serialized = scheduler_dag(dag)
    started = time.monotonic()
    with create_session() as session:
        dag_run = session.scalar(sql_select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        assert dag_run is not None, run_id
        chosen = [ti for ti in dag_run.get_task_instances(session=session) if select(ti)]
        assert chosen, "nothing selected to re-run"
        clear_task_instances(chosen, session, dag_run_state=DagRunState.QUEUED)
        session.commit()
        dag_run = session.scalar(sql_select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        dag_run.dag = serialized
        dag_run.state = DagRunState.RUNNING
        session.commit()
        deadline = time.monotonic() + 240
        while dag_run.state == DagRunState.RUNNING:
            assert time.monotonic() < deadline, "the re-run did not finish"
            session.expire_all()
            schedulable, _ = dag_run.update_state(session=session)
            for ti in schedulable:
                if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                    ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            scheduled = [
                ti
                for ti in dag_run.get_task_instances(session=session)
                if ti.state == TaskInstanceState.SCHEDULED
            ]
            for ti in scheduled:
                # A task's failure is recorded by Airflow and by the DAG's callback.
                with contextlib.suppress(Exception):
                    run_task_like_dag_test(ti, dag.task_dict[ti.task_id])
        state = str(dag_run.state)
    return _account(collect_outcome(dag_id, run_id, state, time.monotonic() - started, record_dir))


def _account(outcome: DagOutcome) -> DagOutcome:
    """Check the run leaked no key into what users read, and add it to the ledger."""
    tasks, failures = outcome.tasks, outcome.failures
    # The key is in no XCom value (request ids, manifests, URLs) and in no failure a user would read.
    seen = json.dumps([[t.task_id, t.map_index, t.xcom] for t in tasks.values()], default=str)
    assert FAULT_KEY not in seen, "the API key is in an XCom value"
    assert FAULT_KEY not in json.dumps(failures), "the API key is in a task's failure"
    LEDGER.dag_runs += 1
    LEDGER.used = True
    LEDGER.tasks_completed += sum(
        1 for t in tasks.values() if t.state == "success" and not t.task_id.startswith("arm")
    )
    return outcome


def task_log_text(dag_id: str, run_id: str | None = None) -> str:
    """Every task log file Airflow wrote under AIRFLOW_HOME/logs for ``dag_id`` (and ``run_id``)."""
    folder = AIRFLOW_HOME / "logs" / f"dag_id={dag_id}"
    if run_id is not None:
        folder = folder / f"run_id={run_id}"
    if not folder.exists():
        return ""
    return "\n".join(path.read_text(errors="replace") for path in sorted(folder.rglob("*")) if path.is_file())


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """:func:`conftest.wait_for` with this suite's defaults."""
    return shared_wait_for(condition, timeout, interval)
