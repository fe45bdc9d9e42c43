"""
A throw-away Airflow for tests: an ``AIRFLOW_HOME`` with a migrated sqlite database and a DAGs folder,
and a way to run a DAG file with ``dag.test()`` and read back what Airflow recorded.

Two facts of Airflow shape it. Airflow reads its configuration once, when it is first imported, so
``AIRFLOW_HOME`` and the DAGs folder are set in the environment before that (:func:`prepare_environment`).
And ``dag.test()`` writes the DAGs of the configured DAGs folder to the database before it runs one, so
a DAG under test must be imported from a file inside that folder: :meth:`AirflowHome.run_dag` copies the
user's file there first.

Nothing here imports Airflow at module level: the pytest plugin imports this module in every pytest run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import DAG

#: The environment a test Airflow runs with (``AIRFLOW_HOME`` and the DAGs folder are added).
BASE_ENVIRONMENT = {
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
}
#: Set by :func:`prepare_environment` to the home it made, so a second call reuses it.
MARKER_ENV = "CEREBRAFORM_TEST_AIRFLOW_HOME"
#: The pytest-xdist worker that made that home: each worker process needs a database of its own.
MARKER_WORKER_ENV = "CEREBRAFORM_TEST_AIRFLOW_HOME_WORKER"
XDIST_WORKER_ENV = "PYTEST_XDIST_WORKER"


class AirflowImportedTooEarly(RuntimeError):
    """Airflow was imported (and read its configuration) before the test home was set."""


def prepare_environment() -> Path:
    """
    Create a temporary ``AIRFLOW_HOME`` with a ``dags`` folder and point this process's environment at
    it; return it. Idempotent within a process (and its children, which inherit the environment), except
    that each pytest-xdist worker makes its own home rather than share its controller's sqlite database.

    :raises AirflowImportedTooEarly: when Airflow was already imported with another home.
    """
    made = os.environ.get(MARKER_ENV)
    worker = os.environ.get(XDIST_WORKER_ENV, "")
    if made and os.environ.get("AIRFLOW_HOME") == made and os.environ.get(MARKER_WORKER_ENV, "") == worker:
        home = Path(made)
    else:
        _refuse_if_airflow_configured(None)
        home = Path(tempfile.mkdtemp(prefix="cerebraform-airflow-home-"))
        os.environ.update(
            {
                **BASE_ENVIRONMENT,
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                MARKER_ENV: str(home),
                MARKER_WORKER_ENV: worker,
                # Airflow 3.2's in-process execution API (dag.test()) signs its task tokens with this
                # and fails every task without it; 3.3 makes its own.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            }
        )
    (home / "dags").mkdir(parents=True, exist_ok=True)
    _refuse_if_airflow_configured(home)
    return home


def _refuse_if_airflow_configured(home: Path | None) -> None:
    configuration = sys.modules.get("airflow.configuration")
    if configuration is None:
        return
    configured = Path(getattr(configuration, "AIRFLOW_HOME", "")).resolve()
    if home is not None and configured == home.resolve():
        return
    raise AirflowImportedTooEarly(
        f"Airflow was imported before the test AIRFLOW_HOME was set, and configured itself for "
        f"{configured}. Either import Airflow (and airflow_provider_cerebraform's operators) inside your "
        f"tests rather than at the top of a test module or conftest.py, or set "
        f"`cerebraform_airflow_at_start = true` in your pytest configuration ([tool.pytest.ini_options] "
        f"or pytest.ini), which sets the home before any test module is imported."
    )


@dataclass
class TaskOutcome:
    """One task instance after a run.

    :param task_id: its task id.
    :param map_index: its map index (-1 when not mapped).
    :param state: its final state (``"success"``, ``"failed"``, ...).
    :param try_number: the try it ended on.
    :param xcom: its XComs by key.
    :param reschedules: how many times a sensor in reschedule mode was rescheduled.
    """

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
    """What one ``dag.test()`` left behind.

    :param dag_id: the DAG.
    :param run_id: its run.
    :param state: the run's final state.
    :param seconds: wall time of ``dag.test()``.
    :param tasks: every task instance by ``(task_id, map_index)``.
    :param failures: failures recorded by the DAG's own callbacks, where a test collects them.
    """

    dag_id: str
    run_id: str
    state: str
    seconds: float
    tasks: dict[tuple[str, int], TaskOutcome]
    failures: list[dict[str, Any]] = field(default_factory=list)

    def task(self, task_id: str, map_index: int = -1) -> TaskOutcome:
        return self.tasks[(task_id, map_index)]

    def mapped(self, task_id: str) -> list[TaskOutcome]:
        return sorted(
            (t for (tid, index), t in self.tasks.items() if tid == task_id and index >= 0),
            key=lambda t: t.map_index,
        )

    @property
    def states(self) -> dict[str, str | None]:
        """Every task's state, keyed ``task_id`` or ``task_id[map_index]`` for mapped ones."""
        return {
            (tid if index < 0 else f"{tid}[{index}]"): outcome.state
            for (tid, index), outcome in sorted(self.tasks.items())
        }

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


class AirflowHome:
    """A migrated, throw-away Airflow home for one test session.

    :param path: the ``AIRFLOW_HOME`` (made by :func:`prepare_environment`).
    :param rootdir: where relative DAG paths are looked up first (pytest's rootdir).
    """

    def __init__(self, path: Path, rootdir: Path | None = None) -> None:
        self.path = path
        self.dags_folder = path / "dags"
        self.rootdir = rootdir or Path.cwd()
        self.migrated = False

    def __repr__(self) -> str:
        return f"AirflowHome({str(self.path)!r})"

    def migrate(self) -> None:
        """Create the metadata database (``airflow db migrate`` in a subprocess, as a user would)."""
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            capture_output=True,
            text=True,
            timeout=600,
            env=os.environ.copy(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{done.stderr[-3000:]}")
        self.migrated = True

    def add_dags(self, source: str | os.PathLike[str], name: str | None = None) -> Path:
        """Copy a folder of DAG files (and the modules they import) into the DAGs folder; return the copy."""
        source = self._resolve(source)
        target = self.dags_folder / (name or source.name)
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        return target

    def dag_path(self, dag_file: str | os.PathLike[str]) -> Path:
        """The copy of ``dag_file`` inside the DAGs folder (copied now unless it already is inside)."""
        given = Path(dag_file)
        if not given.is_absolute() and (self.dags_folder / given).is_file():
            return self.dags_folder / given
        source = self._resolve(given)
        if source.is_relative_to(self.dags_folder.resolve()):
            return source
        # One folder per source folder: two DAG files with the same name from different places stay apart.
        digest = hashlib.sha256(str(source.parent).encode()).hexdigest()[:10]
        target = self.dags_folder / f"copied_{source.parent.name}_{digest}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return target

    def load_dag(self, dag_file: str | os.PathLike[str], dag_id: str | None = None) -> DAG:
        """Import ``dag_file`` from its copy in the DAGs folder and return its DAG ``dag_id`` (the only
        one when ``None``)."""
        path = self.dag_path(dag_file)
        # Airflow's own loader: it finds DAGs made in a ``with DAG(...)`` block without a name too.
        from airflow_provider_cerebraform.version_compat import dag_bag

        make_dag_test_like_a_worker()
        bag = dag_bag(dag_folder=str(path), safe_mode=False)
        if bag.import_errors:
            raise ImportError(f"{dag_file} did not import:\n" + "\n".join(bag.import_errors.values()))
        register_like_the_dag_processor(bag)
        dags = bag.dags
        if dag_id is None and len(dags) == 1:
            return next(iter(dags.values()))
        if dag_id is None or dag_id not in dags:
            wanted = "a dag_id" if dag_id is None else f"dag_id {dag_id!r}"
            raise LookupError(f"give {wanted} defined in {dag_file}: it defines {sorted(dags) or 'no DAG'}")
        return dags[dag_id]

    def run_dag(
        self,
        dag_file: str | os.PathLike[str],
        dag_id: str | None = None,
        *,
        conf: dict[str, Any] | None = None,
        **test_kwargs: Any,
    ) -> DagOutcome:
        """
        Run one DAG of ``dag_file`` with ``dag.test()`` and return what Airflow recorded.

        :param dag_file: a DAG file: absolute, relative to pytest's rootdir or the working directory, or
            relative to the DAGs folder.
        :param dag_id: the DAG to run; may be left out when the file defines one DAG.
        :param conf: the run's ``conf``.
        :param test_kwargs: passed on to ``dag.test()`` (``logical_date``, ``run_after``, ...).
        """
        if not self.migrated:
            self.migrate()
        dag = self.load_dag(dag_file, dag_id)
        started = time.monotonic()
        dag_run = dag.test(run_conf=conf or None, **test_kwargs)
        return collect_outcome(dag.dag_id, dag_run.run_id, str(dag_run.state), time.monotonic() - started)

    def _resolve(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        for candidate in (path,) if path.is_absolute() else (self.rootdir / path, Path.cwd() / path):
            if candidate.exists():
                return candidate.resolve()
        raise FileNotFoundError(
            f"no such DAG file or folder: {path} (looked in {self.rootdir} and {Path.cwd()})"
        )


def make_dag_test_like_a_worker() -> None:
    """
    Before Airflow 3.3, ``dag.test()`` differs from a worker in ways that break tests of a task's
    failures; fix them in this process (only the test harness changes, a real worker already does this):

    - It builds a new in-process execution API (``InProcessExecutionAPI``) for every task, which
      nothing references once the task's client is built: when that is garbage collected, the app's
      lifespan closes and removes its service registry, and the task's next request fails with
      "'State' object has no attribute 'svcs_registry'" (every task on 3.2.2). Building it also costs
      seconds of CPU per task (the versioned routes are deep-copied), and a thread running its event
      loop that never ends. Build one per process and keep it, waiting for its startup, as 3.3 does
      (``lru_cache(maxsize=1)`` on ``in_process_api_server``).
    - It runs ``on_failure_callback`` / ``on_retry_callback`` without the task's exception in
      ``context["exception"]`` (None on 3.0 to 3.2); a worker sets it, and so does 3.3's ``dag.test()``.
    - On 3.0 only, a sensor in ``mode="reschedule"`` gets its first reschedule date as a string
      (:func:`_validate_reschedule_start_dates`).
    """
    from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_1_PLUS, AIRFLOW_V_3_3_PLUS

    global _DAG_TEST_PATCHED
    if AIRFLOW_V_3_3_PLUS or _DAG_TEST_PATCHED:
        return
    from airflow.sdk.execution_time import supervisor, task_runner

    unkept = supervisor.in_process_api_server

    @functools.lru_cache(maxsize=1)
    def in_process_api_server() -> Any:
        api = unkept()
        api.transport  # noqa: B018  (starts the app's lifespan on the transport's event loop)
        deadline = time.monotonic() + 60
        while not hasattr(api.app.state, "svcs_registry"):
            if time.monotonic() > deadline:
                raise TimeoutError("the in-process execution API did not start within 60 s")
            time.sleep(0.002)
        return api

    finalize = task_runner.finalize

    def finalize_with_the_exception(ti: Any, state: Any, context: Any, log: Any, error: Any = None) -> Any:
        if error is not None and context.get("exception") is None:
            context["exception"] = error
        return finalize(ti, state, context, log, error)

    # dag.test()'s supervisor imports both by name when it runs a task, so these are the ones it uses.
    supervisor.in_process_api_server = in_process_api_server
    task_runner.finalize = finalize_with_the_exception
    if not AIRFLOW_V_3_1_PLUS:
        _validate_reschedule_start_dates()
    _DAG_TEST_PATCHED = True


def _validate_reschedule_start_dates() -> None:
    """
    Airflow 3.0's client builds the first reschedule date's answer without validating it
    (``model_construct``), so it stays a string; a worker validates it when the answer crosses to the
    task process, but ``dag.test()`` hands the object over as it is, and every sensor in
    ``mode="reschedule"`` then fails on its second poke ("unsupported operand type(s) for -").
    """
    from airflow.sdk.api.client import TaskInstanceOperations
    from airflow.sdk.execution_time.comms import TaskRescheduleStartDate

    unvalidated = TaskInstanceOperations.get_reschedule_start_date

    def get_reschedule_start_date(self: Any, id: Any, try_number: int = 1) -> Any:
        answer = unvalidated(self, id, try_number)
        return TaskRescheduleStartDate.model_validate({"start_date": answer.start_date})

    TaskInstanceOperations.get_reschedule_start_date = get_reschedule_start_date  # type: ignore[method-assign]


def run_task_like_dag_test(ti: Any, task: Any) -> None:
    """Run one scheduled task instance in this process, triggers included, as ``dag.test()``'s loop does
    (a harness that re-runs part of a DAG run drives that loop itself)."""
    from airflow.sdk.definitions.dag import _run_task

    from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_1_PLUS

    if AIRFLOW_V_3_1_PLUS:
        _run_task(ti=ti, task=task, run_triggerer=True)
    else:  # 3.0 takes the task from the task instance
        ti.task = task
        _run_task(ti=ti, run_triggerer=True)


def register_like_the_dag_processor(bag: Any) -> None:
    """
    Before Airflow 3.1, ``dag.test()`` does not write the DAG to the metadata database: its assets are
    then unknown, so "inactive", and every task with an asset inlet or outlet fails
    (``AirflowInactiveAssetInInletOrOutletException``). Write the bag as the dag-processor would, assets
    activated, as 3.1's ``dag.test()`` does itself.
    """
    from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_1_PLUS

    if AIRFLOW_V_3_1_PLUS:
        return
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()
    bag.sync_to_db(bundle_name="dags-folder", bundle_version=None)


_DAG_TEST_PATCHED = False


def collect_outcome(dag_id: str, run_id: str, state: str, seconds: float) -> DagOutcome:
    """What Airflow recorded for one DAG run: task states, tries, reschedules and XComs."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    tasks: dict[tuple[str, int], TaskOutcome] = {}
    with create_session() as session:
        dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if dag_run is None:
            raise LookupError(f"no run {run_id} of {dag_id} in the metadata database")
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
    return DagOutcome(dag_id, run_id, state, seconds, tasks)
