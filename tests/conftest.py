"""
Airflow for the whole test session, through the fixtures the package ships (its pytest plugin): a
throw-away AIRFLOW_HOME with a migrated sqlite database (``cerebraform_airflow``) and a DAGS_FOLDER
holding copies of ``example_dags/`` and ``tests/dags/``.

pyproject's ``cerebraform_airflow_at_start = true`` makes the plugin set the environment before this
file is imported; ``prepare_environment()`` below returns that home (or sets it, under ``-p no:cerebraform``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from s3 import MotoServer

from airflow_provider_cerebraform.emulator.airflow_home import AirflowHome, prepare_environment

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow.sdk import DAG

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_HOME = prepare_environment()
DAGS_FOLDER = AIRFLOW_HOME / "dags"
_HOME = AirflowHome(AIRFLOW_HOME, rootdir=REPO)


@pytest.fixture(scope="session")
def airflow_db(cerebraform_airflow: AirflowHome) -> Path:
    """The plugin's migrated Airflow home, with this repository's DAG folders copied in."""
    cerebraform_airflow.add_dags(REPO / "example_dags", "example_dags")
    cerebraform_airflow.add_dags(REPO / "tests" / "dags", "test_dags")
    return cerebraform_airflow.path


def load_dag(relative_path: str, dag_id: str) -> DAG:
    """Import a DAG from its copy in the session's DAGS_FOLDER (e.g. ``"test_dags/basic.py"``)."""
    return _HOME.load_dag(relative_path, dag_id)


#: Test files that each take a minute or more, longest first (``--durations=30`` of a CI run): they start a
#: real Airflow stack, a run of the benchmarks, or worker processes. scripts/test hands whole files to
#: pytest-xdist's two workers in collection order (``--no-loadscope-reorder``; each worker is given two
#: files to begin with), so these go first, or one of them would end the run with the other worker idle.
LONG_FILES = (
    "tests/real_airflow/test_celery.py",
    "tests/real_airflow/test_real_airflow.py",
    "tests/test_benchmarks_smoke.py",
    "tests/operators/test_operator_lineage.py",
    "tests/test_metrics.py",
    "tests/emulator/test_pytest_plugin.py",
    "tests/budget/test_shared_budget.py",
    "tests/batch/test_batch_faults.py",
    "tests/batch/test_batch_cli.py",
    "tests/faults/test_killed_worker.py",
)


def _long_first(item: pytest.Item) -> int:
    path = item.path.relative_to(REPO).as_posix()
    return next((rank for rank, prefix in enumerate(LONG_FILES) if path.startswith(prefix)), len(LONG_FILES))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Put the long test files first (a stable sort: the order within a file stays), and skip tests marked
    ``airflow_min("3.3", reason=...)`` on an older Airflow, with the reason.
    """
    items.sort(key=_long_first)
    from packaging.version import Version

    from airflow_provider_cerebraform.version_compat import AIRFLOW_VERSION

    for item in items:
        marker = item.get_closest_marker("airflow_min")
        if marker is not None and Version(marker.args[0]) > AIRFLOW_VERSION:
            reason = marker.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"Airflow {marker.args[0]}+ only: {reason}"))


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(interval)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    """A moto S3 server on loopback for the module's tests, stopped by pid at its end (``tests/s3.py``)."""
    with MotoServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_pacers() -> Iterator[None]:
    """
    Hooks built inside operators and triggers use the process-wide pacer of their key, as in a
    worker; every test starts and ends without pacing state. Tests that build clients pass their own.
    """
    from airflow_provider_cerebraform.pacing import reset_pacers

    reset_pacers()
    yield
    reset_pacers()


def output_entries(folder: Path) -> list[Path]:
    """
    What a user sees in an output folder, sorted: the media and manifests, without the hidden folder
    where the submit operators keep their retry record on Airflow before 3.3
    (``state_storage.STATE_FOLDER``, docs/installing.md). On 3.3 that folder must not be there at all.
    """
    from airflow_provider_cerebraform.state_storage import STATE_FOLDER
    from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_3_PLUS

    if AIRFLOW_V_3_3_PLUS:
        assert not (folder / STATE_FOLDER).exists(), "3.3 keeps the retry record in the task state store"
    return sorted(path for path in folder.iterdir() if path.name != STATE_FOLDER)
