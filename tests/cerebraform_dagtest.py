"""
Helpers for running the DAGs of ``tests/dags/cerebraform_test_dags.py`` with ``dag.test()`` and reading
back what Airflow recorded: task states and tries, XCom values, asset events, reschedules, and the
failure each task reported (written by the DAGs' ``on_failure_callback``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conftest import load_dag

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

DAG_FILE = "test_dags/cerebraform_test_dags.py"
RECORD_DIR_ENV = "CEREBRAFORM_TEST_RECORD_DIR"


@dataclass
class TaskOutcome:
    task_id: str
    map_index: int
    state: str | None
    try_number: int
    xcom: dict[str, Any] = field(default_factory=dict)
    reschedules: int = 0

    @property
    def return_value(self) -> Any:
        return self.xcom.get("return_value")


@dataclass
class DagOutcome:
    """What one ``dag.test()`` left behind."""

    dag_id: str
    run_id: str
    state: str
    seconds: float
    tasks: dict[tuple[str, int], TaskOutcome]
    failures: list[dict[str, Any]]

    def task(self, task_id: str, map_index: int = -1) -> TaskOutcome:
        return self.tasks[(task_id, map_index)]

    def mapped(self, task_id: str) -> list[TaskOutcome]:
        return sorted(
            (t for (tid, index), t in self.tasks.items() if tid == task_id and index >= 0),
            key=lambda t: t.map_index,
        )

    def failures_of(self, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        return sorted(
            (f for f in self.failures if f["task_id"] == task_id and f["map_index"] == map_index),
            key=lambda f: f["try_number"],
        )

    def failure(self, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """The one failure of a task that must fail at its first try (no retry spent)."""
        (only,) = self.failures_of(task_id, map_index)
        return only

    def asset_events(self, asset_name: str) -> list[dict[str, Any]]:
        from airflow.models.asset import AssetEvent, AssetModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(
                select(AssetEvent)
                .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                .where(
                    AssetModel.name == asset_name,
                    AssetEvent.source_dag_id == self.dag_id,
                    AssetEvent.source_run_id == self.run_id,
                )
            ).scalars()
            return [{"source_task_id": row.source_task_id, "extra": dict(row.extra or {})} for row in rows]


def run_dag(
    dag_id: str,
    record_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    dag_file: str = DAG_FILE,
    record_env: str = RECORD_DIR_ENV,
    **conf: Any,
) -> DagOutcome:
    """
    Load ``dag_id`` from ``dag_file`` in the session's DAG folder, run it once with ``dag.test()`` and
    collect the outcome; the DAG's callbacks write its failures to ``record_dir`` (named by ``record_env``).
    """
    record_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv(record_env, str(record_dir))
    dag = load_dag(dag_file, dag_id)
    started = time.monotonic()
    dag_run = dag.test(run_conf=conf or None)
    return collect_outcome(dag_id, dag_run.run_id, str(dag_run.state), time.monotonic() - started, record_dir)


def collect_outcome(dag_id: str, run_id: str, state: str, seconds: float, record_dir: Path) -> DagOutcome:
    """What Airflow recorded for one DAG run: task states, tries, reschedules, XComs; plus the failures."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    tasks: dict[tuple[str, int], TaskOutcome] = {}
    with create_session() as session:
        dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        assert dag_run is not None, run_id
        for ti in dag_run.get_task_instances(session=session):
            reschedules = len(
                list(session.scalars(select(TaskReschedule.id).where(TaskReschedule.ti_id == ti.id)))
            )
            tasks[(ti.task_id, ti.map_index)] = TaskOutcome(
                ti.task_id, ti.map_index, ti.state, ti.try_number, reschedules=reschedules
            )
        rows = session.scalars(
            select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id)
        )
        for row in rows:
            tasks[(row.task_id, row.map_index)].xcom[row.key] = XComModel.deserialize_value(row)
    failures = [json.loads(path.read_text()) for path in sorted(record_dir.glob(f"{dag_id}.*.json"))]
    return DagOutcome(dag_id, run_id, state, seconds, tasks, failures)
