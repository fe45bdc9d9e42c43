"""The pytest fixtures, both in this session and in a user's own pytest run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from typing import TYPE_CHECKING

import pytest
import requests

from airflow_provider_cerebraform.emulator.process import _PACKAGE_ROOT

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

USER_TEST = """
import json, os
import requests


def test_submit(cerebraform_emulator):
    conn = json.loads(os.environ["AIRFLOW_CONN_CEREBRAFORM_DEFAULT"])
    assert conn["host"] == cerebraform_emulator.url and conn["password"] == "cf-dev-key"
    assert conn["extra"] == {"tier": "paid", "time_scale": 40.0}
    headers = {"Authorization": f"Bearer {conn['password']}"}
    response = requests.post(conn["host"] + "/ai/v1/to-image", json={"prompt": "x"}, headers=headers)
    assert response.status_code == 201
    assert len(cerebraform_emulator.admin.tasks()) == 1


def test_each_test_starts_clean(cerebraform_emulator, cerebraform_emulator_args):
    assert cerebraform_emulator.admin.tasks() == []
    assert cerebraform_emulator.admin.config()["time_scale"] == 40
    assert cerebraform_emulator.process.is_running()
"""

USER_CONFTEST = """
import pytest


@pytest.fixture(scope="session")
def cerebraform_emulator_args():
    return ["--time-scale", "40", "--credits", "77"]
"""

USER_OVERRIDE_TEST = """
def test_overridden_args(cerebraform_emulator):
    assert cerebraform_emulator.admin.stats()["credits"]["anonymous"] == 1000
    assert cerebraform_emulator.admin.config()["credits"] == 77
"""


def test_fixture_sets_the_connection_and_resets(cerebraform_emulator: EmulatorHandle) -> None:
    conn = json.loads(os.environ["AIRFLOW_CONN_CEREBRAFORM_DEFAULT"])
    assert conn == {
        "conn_type": "cerebraform",
        "host": cerebraform_emulator.url,
        "password": "cf-dev-key",
        "extra": {"tier": "paid", "time_scale": 40.0},
    }
    assert cerebraform_emulator.api_key == "cf-dev-key"
    assert cerebraform_emulator.conn_id == "cerebraform_default"
    headers = {"Authorization": f"Bearer {cerebraform_emulator.api_key}"}
    response = requests.get(cerebraform_emulator.url + "/ai/v1/user/credits", headers=headers, timeout=5)
    assert response.json() == {"credits": 1000}
    assert cerebraform_emulator.admin.stats()["requests"]["credits"] == 1


def test_fixtures_in_a_users_own_pytest_run(tmp_path: Path) -> None:
    (tmp_path / "test_user_dag.py").write_text(USER_TEST)
    (tmp_path / "conftest.py").write_text(USER_CONFTEST)
    (tmp_path / "test_override.py").write_text(USER_OVERRIDE_TEST)
    installed = any(
        ep.value == "airflow_provider_cerebraform.emulator.pytest_plugin"
        for ep in metadata.entry_points(group="pytest11")
    )
    plugin = [] if installed else ["-p", "airflow_provider_cerebraform.emulator.pytest_plugin"]
    env = {**os.environ, "PYTHONPATH": _PACKAGE_ROOT}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout


USER_DAG = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator

with DAG("my_first_generation", schedule=None, start_date=datetime(2026, 1, 1)):
    CerebraformGenerateOperator(task_id="cat", prompt="a cat in a wizard hat", poll_interval=0.2)
"""

#: A user's whole test of their DAG: the DAG's path, the shipped fixtures and one call.
USER_DAG_TEST = """
def test_my_dag(cerebraform_emulator, cerebraform_airflow):
    run = cerebraform_airflow.run_dag("dags/my_dag.py")
    assert run.states == {"cat": "success"}
    assert len(cerebraform_emulator.admin.tasks()) == 1
"""

USER_EARLY_IMPORT_TEST = """
from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator


def test_my_dag(cerebraform_emulator, cerebraform_airflow):
    cerebraform_airflow.run_dag("dags/my_dag.py")
"""


def _user_pytest(
    project: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``pytest`` in a user's project: a fresh environment (no Airflow settings of this session)."""
    installed = any(
        ep.value == "airflow_provider_cerebraform.emulator.pytest_plugin"
        for ep in metadata.entry_points(group="pytest11")
    )
    plugin = [] if installed else ["-p", "airflow_provider_cerebraform.emulator.pytest_plugin"]
    fresh = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CEREBRAFORM"))}
    env = {**fresh, "PYTHONPATH": _PACKAGE_ROOT, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


#: A whole pytest run in a subprocess (Airflow import, db migrate, dag.test): minutes on a loaded machine.
SUBPROCESS_TIMEOUT = pytest.mark.timeout(900)


@SUBPROCESS_TIMEOUT
def test_a_users_dag_test_is_the_dag_path_the_fixtures_and_one_call(tmp_path: Path) -> None:
    """A project outside this repository: its DAG file, a four-line test, no conftest.py."""
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "my_dag.py").write_text(USER_DAG)
    (tmp_path / "test_my_dag.py").write_text(USER_DAG_TEST)
    assert len([line for line in USER_DAG_TEST.splitlines() if line.strip()]) == 4

    done = _user_pytest(tmp_path)

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
    assert not (tmp_path / "airflow.db").exists() and not (tmp_path / "airflow.cfg").exists()


@SUBPROCESS_TIMEOUT
def test_airflow_imported_before_the_fixture_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "my_dag.py").write_text(USER_DAG)
    (tmp_path / "test_my_dag.py").write_text(USER_EARLY_IMPORT_TEST)

    done = _user_pytest(tmp_path)

    assert done.returncode == 1, done.stdout[-4000:]
    assert "Airflow was imported before the test AIRFLOW_HOME was set" in done.stdout
    assert "cerebraform_airflow_at_start = true" in done.stdout


@SUBPROCESS_TIMEOUT
def test_the_plugin_leaves_a_run_that_uses_no_fixture_alone(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(
        "import os, sys\n\n\ndef test_plain():\n"
        "    assert 'AIRFLOW_HOME' not in os.environ\n"
        "    assert not any(name == 'airflow' or name.startswith('airflow.') for name in sys.modules)\n"
    )
    done = _user_pytest(tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


#: Each test writes the Airflow home it was given, under its pytest-xdist worker's name.
RECORD_HOME_TEST = """
import os
from pathlib import Path


def test_home():
    worker = os.environ["PYTEST_XDIST_WORKER"]
    Path(os.environ["RECORD_DIR"], worker).write_text(os.environ["AIRFLOW_HOME"])
"""


@SUBPROCESS_TIMEOUT
def test_each_xdist_worker_gets_an_airflow_home_of_its_own(tmp_path: Path) -> None:
    """Two workers sharing one sqlite database would lock each other out: each makes its own home."""
    project, records = tmp_path / "project", tmp_path / "records"
    project.mkdir()
    records.mkdir()
    (project / "pytest.ini").write_text("[pytest]\ncerebraform_airflow_at_start = true\n")
    for name in ("test_one.py", "test_two.py"):
        (project / name).write_text(RECORD_HOME_TEST)

    done = _user_pytest(project, "-n", "2", "--dist", "loadfile", env={"RECORD_DIR": str(records)})

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    homes = {path.name: path.read_text() for path in records.iterdir()}
    assert sorted(homes) == ["gw0", "gw1"], homes
    assert len(set(homes.values())) == 2, homes
