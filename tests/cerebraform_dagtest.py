"""
Helpers for running the DAGs of ``tests/dags/cerebraform_test_dags.py`` with ``dag.test()`` and reading
back what Airflow recorded: task states and tries, XCom values, asset events, reschedules, and the
failure each task reported (written by the DAGs' ``on_failure_callback``).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from conftest import load_dag

from airflow_provider_cerebraform.emulator.airflow_home import DagOutcome, TaskOutcome
from airflow_provider_cerebraform.emulator.airflow_home import collect_outcome as collect_airflow_outcome

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

__all__ = ["DagOutcome", "TaskOutcome", "collect_outcome", "run_dag"]

DAG_FILE = "test_dags/cerebraform_test_dags.py"
RECORD_DIR_ENV = "CEREBRAFORM_TEST_RECORD_DIR"


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
    """What Airflow recorded for one DAG run (the shipped helper), plus the failures the callbacks wrote."""
    outcome = collect_airflow_outcome(dag_id, run_id, state, seconds)
    outcome.failures = [json.loads(path.read_text()) for path in sorted(record_dir.glob(f"{dag_id}.*.json"))]
    return outcome
