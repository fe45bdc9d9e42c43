"""pytest fixtures for the Cerebraform emulator (entry point ``pytest11``; loaded in every pytest run).

Imports stay cheap: the emulator itself is imported only when a fixture is used.

- ``cerebraform_emulator_args`` (session): CLI flags of the session emulator; override it in a conftest.
- ``cerebraform_emulator_process`` (session): one :class:`EmulatorProcess` for the whole run.
- ``cerebraform_emulator`` (function): resets that emulator, points ``AIRFLOW_CONN_CEREBRAFORM_DEFAULT``
  at it and yields an :class:`EmulatorHandle`.
- ``cerebraform_airflow`` (session): a throw-away, migrated ``AIRFLOW_HOME`` with a DAGs folder, as an
  :class:`~airflow_provider_cerebraform.emulator.airflow_home.AirflowHome`; its ``run_dag(path)`` runs a
  DAG file with ``dag.test()`` and returns every task's outcome.

Airflow reads its configuration when first imported, so the home must be set before that. The fixture
sets it when first requested, which is enough when test modules import Airflow inside their tests; the
ini option ``cerebraform_airflow_at_start = true`` sets it before any conftest or test module is
imported. Without that option, a pytest run that uses none of these fixtures is left untouched.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .admin import EmulatorAdmin
    from .airflow_home import AirflowHome
    from .process import EmulatorProcess

#: The session emulator's defaults: jobs 40x faster (an image takes 0.3 s, a video 1.5 s).
FAST_ARGS = ("--time-scale", "40", "--log-level", "WARNING")
CONN_ENV = "AIRFLOW_CONN_CEREBRAFORM_DEFAULT"
DEV_KEY = "cf-dev-key"


@dataclass
class EmulatorHandle:
    """What ``cerebraform_emulator`` yields.

    :param url: the emulator's base URL.
    :param api_key: a key of tier paid (the dev key).
    :param admin: control client.
    :param process: the session's emulator process.
    :param conn_id: the Airflow connection id set in the environment.
    :param time_scale: the emulator's ``--time-scale``; the connection passes it on so the client's
        pacing uses the same compressed windows.
    """

    url: str
    api_key: str
    admin: EmulatorAdmin
    process: EmulatorProcess
    conn_id: str = "cerebraform_default"
    time_scale: float = 1.0

    def connection_json(self, **extra: object) -> str:
        """Return the JSON connection put in ``AIRFLOW_CONN_CEREBRAFORM_DEFAULT`` (``extra`` adds fields)."""
        fields = {"tier": "paid", "time_scale": self.time_scale, **extra}
        return json.dumps(
            {"conn_type": "cerebraform", "host": self.url, "password": self.api_key, "extra": fields}
        )


AT_START_INI = "cerebraform_airflow_at_start"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        AT_START_INI,
        "set a throw-away AIRFLOW_HOME for the cerebraform_airflow fixture when pytest starts, before "
        "conftest.py files and test modules are imported (needed when they import Airflow at the top)",
        type="bool",
        default=False,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    if early_config.getini(AT_START_INI):
        from .airflow_home import prepare_environment

        prepare_environment()


@pytest.fixture(scope="session")
def cerebraform_airflow(request: pytest.FixtureRequest) -> Iterator[AirflowHome]:
    """A migrated, throw-away ``AIRFLOW_HOME`` for the session; ``run_dag(dag_file)`` runs a DAG in it."""
    from .airflow_home import AirflowHome, AirflowImportedTooEarly, prepare_environment

    try:
        path = prepare_environment()
    except AirflowImportedTooEarly as error:
        pytest.fail(str(error), pytrace=False)
    home = AirflowHome(path, rootdir=request.config.rootpath)
    home.migrate()
    yield home
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def cerebraform_emulator_args() -> list[str]:
    """CLI flags of the session emulator; override this fixture to change them."""
    return list(FAST_ARGS)


@pytest.fixture(scope="session")
def cerebraform_emulator_process(cerebraform_emulator_args: list[str]) -> Iterator[EmulatorProcess]:
    """One emulator subprocess for the whole session, stopped by pid at the end."""
    from .process import EmulatorProcess

    process = EmulatorProcess(cerebraform_emulator_args)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def cerebraform_emulator(
    cerebraform_emulator_process: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmulatorHandle]:
    """A freshly reset emulator with the ``cerebraform_default`` connection pointing at it."""
    process = cerebraform_emulator_process
    if not process.is_running():
        pytest.fail(f"the Cerebraform emulator process died:\n{process.log_text()[-3000:]}")
    admin = process.admin
    admin.reset()
    handle = EmulatorHandle(
        url=process.url, api_key=DEV_KEY, admin=admin, process=process, time_scale=_time_scale(process.args)
    )
    monkeypatch.setenv(CONN_ENV, handle.connection_json())
    yield handle


def _time_scale(args: list[str]) -> float:
    """The ``--time-scale`` among the emulator's flags (1 when absent)."""
    for position, arg in enumerate(args):
        if arg == "--time-scale" and position + 1 < len(args):
            return float(args[position + 1])
        if arg.startswith("--time-scale="):
            return float(arg.split("=", 1)[1])
    return 1.0
