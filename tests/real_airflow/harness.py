"""
A real Airflow 3.3 stack on loopback for the provider's end-to-end tests, with the emulator beside it.

:class:`AirflowStack` gives every run its own ``AIRFLOW_HOME`` in a temporary directory, migrates its
metadata database (a PostgreSQL database of its own, see ``postgres.py``; sqlite in the home only when
no URL is given), and starts ``api-server``, ``scheduler`` (LocalExecutor), ``dag-processor`` and
``triggerer`` as separate subprocesses (so the triggerer can be restarted alone), plus the Cerebraform
emulator. With ``executor="CeleryExecutor"`` it also starts ``airflow celery worker`` processes
(Redis broker, the metadata database as result backend), and ``triggerers`` may be more than one.
Every Airflow process gets the ``cerebraform_default`` connection through
``AIRFLOW_CONN_CEREBRAFORM_DEFAULT``. Each process writes its own log file under ``<root>/logs``;
each is stopped by its pid (SIGTERM, wait, SIGKILL), then what is left of its process group and of
the descendants recorded before the stop (task runners live in process groups of their own).

The stack is driven through the public REST API v2 of the api-server (the simple auth manager in
all-admins mode needs no token) and observed through it, never with fixed sleeps: every wait is a
condition polled until a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import requests

from airflow_provider_cerebraform.emulator import EmulatorProcess

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parents[2]
TEST_DAGS = Path(__file__).resolve().parent / "dags"
EXAMPLE_DAGS = REPO / "example_dags"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    check: Callable[[], None] | None = None,
) -> Any:
    """
    Poll ``condition`` until it returns something truthy and return that, or raise ``TimeoutError``.

    :param condition: the probe; exceptions it raises count as "not yet" (the last one is reported).
    :param timeout: seconds before giving up.
    :param what: the condition in words, for the error.
    :param interval: seconds between probes.
    :param check: called on every round; raises to abort early (e.g. a component died).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if check is not None:
            check()
        try:
            value = condition()
        except (requests.RequestException, OSError, ValueError, KeyError) as error:
            value, last_error = None, error
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def find_secret_in_files(paths: Iterable[Path], secret: str) -> list[str]:
    """
    Where ``secret`` occurs in the given files, as ``"<path>:<line>"`` (binary-safe; also finds the
    secret JSON- or URL-escaped, which for a key of ``[A-Za-z0-9_-]`` is the same bytes).

    :param paths: files to read; directories are walked.
    :param secret: the text that must not appear.
    """
    needle = secret.encode()
    if not needle:
        raise ValueError("an empty secret matches everything")
    hits: list[str] = []
    for path in _walk(paths):
        data = path.read_bytes()
        if needle in data:
            lines = [str(number) for number, line in enumerate(data.split(b"\n"), 1) if needle in line]
            hits.append(f"{path}:{','.join(lines)}")
    return hits


def assert_secret_not_in_files(paths: Iterable[Path], secret: str) -> int:
    """
    Fail when ``secret`` appears in any of the files (the message names them, not the secret);
    return how many files were scanned, so callers can also assert the scan covered something.

    :param paths: files or directories to scan.
    :param secret: e.g. the API key registered with the emulator.
    """
    files = list(_walk(paths))
    hits = find_secret_in_files(files, secret)
    assert not hits, f"the secret appears in {len(hits)} file(s): {hits}"
    return len(files)


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path


class ManagedProcess:
    """
    One component in a session (and so a process group) of its own, logging to a file.

    :param name: a label for logs and errors.
    :param argv: the command.
    :param env: its environment.
    :param log_path: receives stdout and stderr.
    """

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> ManagedProcess:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """
        SIGTERM the pid, wait up to ``timeout``, SIGKILL if it lingers; then SIGTERM/SIGKILL whatever
        remains of its process group and of the descendants seen before (by pid, via psutil, which
        guards against pid reuse). Return the exit status.

        :param timeout: seconds to wait after SIGTERM.
        """
        popen, self.popen = self.popen, None
        if popen is None:
            return None
        descendants: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(popen.pid).children(recursive=True)
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(popen.pid, signal.SIGKILL)
                popen.wait(10)
        # The group's id is the leader's pid (start_new_session), so it names only what we started.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, sig)
            remaining = [p for p in descendants if _running(p)]
            for process in remaining:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(sig)
            _gone, alive = psutil.wait_procs(remaining, timeout=5)
            if not alive and not _group_exists(popen.pid):
                break
        return popen.returncode


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class AirflowApiError(AssertionError):
    """The api-server answered with an error."""


@dataclass
class RunObservation:
    """What :meth:`AirflowStack.wait_for_run` saw: the final run state and every task state seen."""

    dag_id: str
    run_id: str
    state: str
    task_instances: dict[str, dict[str, Any]]
    states_seen: dict[str, list[str]] = field(default_factory=dict)

    def task_states(self) -> dict[str, str | None]:
        return {task_id: ti["state"] for task_id, ti in self.task_instances.items()}


class AirflowStack:
    """
    A real Airflow on loopback (see the module docstring). Use as a context manager.

    :param root: an empty directory owned by the stack: ``home/`` (AIRFLOW_HOME, sqlite db, task logs),
        ``dags/``, ``logs/`` (one file per process), ``output/`` (the ``cerebraform_output`` Variable),
        ``signals/`` (flag files shared with test DAGs).
    :param api_key: the Cerebraform key the emulator accepts (tier paid) and the connection carries.
    :param time_scale: the emulator's ``--time-scale``, passed to the connection for client pacing.
    :param emulator_args: more emulator flags.
    :param dag_sources: folders copied into the DAG folder, by the name of their copy.
    :param parallelism: ``[core] parallelism`` (LocalExecutor forks that many workers).
    :param extra_env: more environment for every Airflow process.
    :param startup_timeout: seconds for the whole stack to become ready.
    :param database_url: the metadata database's SQLAlchemy URL (an empty database: the stack migrates
        it); default a sqlite file in the home, which serialises the stack's writers.
    :param executor: ``LocalExecutor`` or ``CeleryExecutor`` (then ``broker_url`` is required, the
        result backend is the metadata database, and ``celery_workers`` ``airflow celery worker``
        processes run beside the scheduler, named ``celery-worker-<n>``, hostnames ``w<n>@%h``).
    :param broker_url: the Celery broker (a Redis URL).
    :param celery_workers: how many Celery worker processes.
    :param celery_concurrency: each worker's ``--concurrency``.
    :param triggerers: how many triggerer processes (named ``triggerer``, ``triggerer-2``, ...).
    :param tier: the tier of ``api_key`` at the emulator and in the connection.
    :param connection_extra: more extra fields of the ``cerebraform_default`` connection.
    """

    def __init__(
        self,
        root: Path,
        *,
        api_key: str,
        time_scale: float = 10.0,
        emulator_args: Sequence[str] = (),
        dag_sources: Mapping[str, Path] | None = None,
        parallelism: int = 2,
        extra_env: Mapping[str, str] | None = None,
        startup_timeout: float = 240.0,
        database_url: str | None = None,
        executor: str = "LocalExecutor",
        broker_url: str | None = None,
        celery_workers: int = 2,
        celery_concurrency: int = 2,
        triggerers: int = 1,
        tier: str = "paid",
        connection_extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.home = root / "home"
        self.dags = root / "dags"
        self.logs = root / "logs"
        self.output = root / "output"
        self.signals = root / "signals"
        self.api_key = api_key
        self.time_scale = time_scale
        self.emulator_args = list(emulator_args)
        self.dag_sources = dict(
            dag_sources
            if dag_sources is not None
            else {"real_airflow_dags": TEST_DAGS, "example_dags": EXAMPLE_DAGS}
        )
        self.parallelism = parallelism
        self.extra_env = dict(extra_env or {})
        self.startup_timeout = startup_timeout
        self.database_url = database_url or f"sqlite:///{self.home / 'airflow.db'}"
        if executor not in ("LocalExecutor", "CeleryExecutor"):
            raise ValueError(f"executor must be LocalExecutor or CeleryExecutor, not {executor!r}")
        if executor == "CeleryExecutor" and not broker_url:
            raise ValueError("executor CeleryExecutor needs broker_url")
        self.executor = executor
        self.broker_url = broker_url
        self.celery_workers = celery_workers if executor == "CeleryExecutor" else 0
        self.celery_concurrency = celery_concurrency
        self.triggerers = triggerers
        self.tier = tier
        self.connection_extra = dict(connection_extra or {})
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.emulator: EmulatorProcess | None = None
        self.processes: dict[str, ManagedProcess] = {}
        self.triggerer_starts = 0
        self.triggered_runs: list[tuple[str, str]] = []
        self.startup_seconds: float | None = None
        #: How long each component took to stop, by name (the last stop of each).
        self.stop_seconds: dict[str, float] = {}
        self.http = requests.Session()
        self._env: dict[str, str] = {}

    # ----------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> AirflowStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        began = time.monotonic()
        for folder in (self.home, self.dags, self.logs, self.output, self.signals):
            folder.mkdir(parents=True, exist_ok=True)
        for name, source in self.dag_sources.items():
            if source.is_dir():
                shutil.copytree(
                    source,
                    self.dags / name,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"),
                )
        self.emulator = EmulatorProcess(
            [
                "--time-scale",
                str(self.time_scale),
                "--key",
                f"{self.api_key}={self.tier}",
                "--no-default-key",
                *self.emulator_args,
            ],
            env=self._base_env(),
            log_path=str(self.logs / "emulator.log"),
        )
        self.emulator.start()
        self._env = self._airflow_env()
        migrate_log = self.logs / "db-migrate.log"
        with open(migrate_log, "ab") as log:
            migrated = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self.root,
                timeout=self.startup_timeout,
                check=False,
            )
        assert migrated.returncode == 0, migrate_log.read_text(errors="replace")[-4000:]
        self._start("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.api_port)])
        self._start("scheduler", ["scheduler"])
        self._start("dag-processor", ["dag-processor"])
        for number in range(1, self.triggerers + 1):
            self.start_triggerer("triggerer" if number == 1 else f"triggerer-{number}")
        for number in range(1, self.celery_workers + 1):
            self._start_celery_worker(number)
        remaining = self.startup_timeout - (time.monotonic() - began)
        wait_until(self._healthy, timeout=remaining, what="a healthy stack", interval=0.5, check=self.check)
        # The execution API builds itself on its first request (seconds, blocking the api-server's loop);
        # pay that here rather than inside the first task's start. Over a minute was seen at a load of 15.
        self.http.get(f"{self.api_url}/execution/health", timeout=180).raise_for_status()
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop every process by pid (components in reverse start order, then the emulator)."""
        errors: list[BaseException] = []
        self.http.close()  # an idle keep-alive connection would hold up the api-server's graceful stop
        try:
            self._stop_task_runners()
        except BaseException as error:  # keep stopping the others
            errors.append(error)
        for name in reversed(list(self.processes)):
            began = time.monotonic()
            try:
                self.processes.pop(name).stop()
            except BaseException as error:
                errors.append(error)
            self.stop_seconds[name] = time.monotonic() - began
        if self.emulator is not None:
            emulator, self.emulator = self.emulator, None
            emulator.stop()
        if errors:
            raise errors[0]

    def check(self) -> None:
        """Raise with its log tail if a component has died."""
        for name, process in self.processes.items():
            if not process.alive():
                raise AssertionError(
                    f"{name} exited ({process.popen and process.popen.returncode}):\n{process.log_tail()}"
                )
        if self.emulator is not None and not self.emulator.is_running():
            raise AssertionError(f"the emulator exited:\n{self.emulator.log_text()[-4000:]}")

    def start_triggerer(self, name: str = "triggerer") -> ManagedProcess:
        """Start a triggerer as ``processes[name]``, with a log server port of its own."""
        self.triggerer_starts += 1
        return self._start(
            name,
            ["triggerer", "--pid", str(self.home / f"{name}.pid")],
            # The first triggerer's log is numbered by its starts (tests restart it); others by name.
            log_name=f"triggerer-{self.triggerer_starts}" if name == "triggerer" else name,
            env={"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())},
        )

    def stop_triggerer(self, name: str = "triggerer") -> int | None:
        """SIGTERM a triggerer by pid and wait for it to exit; return its exit status."""
        return self.processes.pop(name).stop(timeout=60)

    def _start_celery_worker(self, number: int) -> ManagedProcess:
        name = f"celery-worker-{number}"
        return self._start(
            name,
            [
                "celery",
                "worker",
                "--celery-hostname",
                f"w{number}@%h",
                "--concurrency",
                str(self.celery_concurrency),
                "--pid",
                str(self.home / f"{name}.pid"),
                "--without-mingle",
                "--without-gossip",
            ],
            env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
        )

    def _stop_task_runners(self, grace: float = 2.0) -> None:
        """
        Stop the task runners still running (in process groups of their own, under the scheduler's
        workers) by pid: SIGTERM, which in Airflow 3 only calls the operator's ``on_kill``, then
        SIGKILL after ``grace``. Otherwise the scheduler's graceful stop waits for them.
        """
        scheduler = self.processes.get("scheduler")
        if scheduler is None or not scheduler.alive():
            return
        runners = [
            process
            for process in psutil.Process(scheduler.pid).children(recursive=True)
            if _running(process) and "airflow worker -- " in " ".join(_cmdline(process))
        ]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for process in runners:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(sig)
            _gone, runners = psutil.wait_procs(runners, timeout=grace)
            if not runners:
                return

    def task_runner(self, ti_id: str) -> psutil.Process | None:
        """
        The process running a task instance's code: LocalExecutor's worker (a fork of the scheduler)
        supervises a forked task runner titled ``airflow worker -- <ti id>``.
        """
        scheduler = self.processes["scheduler"]
        title = f"airflow worker -- {ti_id}"
        for process in psutil.Process(scheduler.pid).children(recursive=True):
            if title in " ".join(_cmdline(process)):
                return process
        return None

    def airflow_cli(self, *args: str, timeout: float = 120.0) -> str:
        """
        Run ``airflow <args>`` against the stack (its environment and database) and return its output;
        fail with that output when it exits non-zero. The output is appended to ``logs/cli.log``, which
        the key scan covers.

        :param args: the command, e.g. ``("pools", "set", "name", "1", "description")``.
        :param timeout: seconds before the command is killed (by subprocess.run, by its pid).
        """
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self._env,
            cwd=self.root,
            timeout=timeout,
            check=False,
        )
        output = (done.stdout + done.stderr).decode(errors="replace")
        with open(self.logs / "cli.log", "a") as log:
            log.write(f"$ airflow {' '.join(args)}\n{output}\n[exit {done.returncode}]\n")
        assert done.returncode == 0, f"airflow {' '.join(args)} exited {done.returncode}:\n{output[-4000:]}"
        return output

    def _start(
        self,
        name: str,
        args: Sequence[str],
        *,
        log_name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        process = ManagedProcess(
            name,
            [sys.executable, "-m", "airflow", *args],
            {**self._env, **(env or {})},
            self.logs / f"{log_name or name}.log",
        )
        self.processes[name] = process.start(self.root)
        return process

    def _base_env(self) -> dict[str, str]:
        # Nothing of the test process's own Airflow configuration (tests/conftest.py sets some) leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONUNBUFFERED"] = "1"
        env["NO_COLOR"] = "1"
        return env

    def _airflow_env(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        assert self.emulator is not None
        connection = {
            "conn_type": "cerebraform",
            "host": self.emulator.url,
            "password": self.api_key,
            "extra": {"tier": self.tier, "time_scale": self.time_scale, **self.connection_extra},
        }
        celery: dict[str, str] = {}
        if self.executor == "CeleryExecutor":
            assert self.broker_url is not None
            celery = {
                "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
                # Celery's database result backend, on the metadata database (SQLAlchemy URL after db+).
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.database_url}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.celery_concurrency),
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            }
        return {
            **self._base_env(),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # Files are parsed once at start; new or changed files are not part of these tests.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600",
            # Only the runs a test triggers: no run for a schedule's latest interval on unpause.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            # The task supervisor waits up to this long (select timeout) to notice its child has exited,
            # so it also delays the executor's success event of a task that deferred. Airflow 3.3.2 fails
            # a resumed task whose stale defer-exit event arrives once it runs again (apache/airflow
            # #72716); 1 s instead of 5 s keeps that window well below the tests' job durations.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "CEREBRAFORM_POLL_INTERVAL": "0.5",
            "AIRFLOW_CONN_CEREBRAFORM_DEFAULT": json.dumps(connection),
            "AIRFLOW_VAR_CEREBRAFORM_OUTPUT": self.output.as_uri(),
            "CF_REAL_AIRFLOW_SIGNALS": str(self.signals),
            **celery,
            **self.extra_env,
        }

    def _healthy(self) -> bool:
        health = self.api("GET", "/monitor/health")
        return all(
            (health.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    # ------------------------------------------------------------------------------------ REST API

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``/api/v2<path>`` and return the JSON answer (None when empty)."""
        response = self.http.request(method, f"{self.api_url}/api/v2{path}", timeout=30, **kwargs)
        if response.status_code >= 400:
            raise AirflowApiError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/importErrors", params={"limit": 100})["import_errors"])

    def wait_for_dag(self, dag_id: str, file_name: str, timeout: float = 120.0) -> dict[str, Any]:
        """
        Wait until the dag-processor has stored ``dag_id``; fail at once on an import error of the file
        named ``file_name`` (others' import errors do not matter here, but are shown on a timeout).
        """

        def parsed() -> dict[str, Any] | None:
            errors = [e for e in self.import_errors() if Path(e["filename"]).name == file_name]
            if errors:
                raise AssertionError(f"{file_name} does not import: {errors[0]['stack_trace'][-3000:]}")
            try:
                return self.api("GET", f"/dags/{dag_id}")
            except AirflowApiError as error:
                if "-> 404" not in str(error):
                    raise
                return None

        try:
            return wait_until(parsed, timeout=timeout, what=f"DAG {dag_id} to be parsed", check=self.check)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; import errors: {self.import_errors()}") from None

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(
        self,
        dag_id: str,
        run_id: str,
        *,
        logical_date: str | None = None,
        conf: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a manual run (``logical_date`` None: no logical date, as in the UI's default)."""
        self.triggered_runs.append((dag_id, run_id))
        return self.api(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": logical_date, "conf": dict(conf or {})},
        )

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's task instances by task id (unmapped tasks)."""
        answer = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return {ti["task_id"]: ti for ti in answer["task_instances"]}

    def state_store(self, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
        """A value of a task instance's ``task_state_store`` (None when the key is absent)."""
        try:
            entry = self.api(
                "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/state-store/{key}"
            )
        except AirflowApiError as error:
            if "-> 404" in str(error):
                return None
            raise
        return entry

    def alive_triggerer_ids(self) -> set[int]:
        jobs = self.api("GET", "/jobs", params={"job_type": "TriggererJob", "is_alive": True})["jobs"]
        return {job["id"] for job in jobs}

    def watch_run(
        self,
        dag_id: str,
        run_id: str,
        until: Callable[[dict[str, dict[str, Any]]], bool],
        *,
        timeout: float,
        what: str,
        seen: dict[str, list[str]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """
        Poll the run's task instances until ``until(task_instances)`` holds, recording into ``seen``
        every state each task is found in (in order); fail early if the run ends first.
        """
        seen = {} if seen is None else seen

        def probe() -> dict[str, dict[str, Any]] | None:
            tis = self.task_instances(dag_id, run_id)
            _record(seen, tis)
            if until(tis):
                return tis
            run = self.dag_run(dag_id, run_id)
            if run["state"] in TERMINAL_RUN_STATES:
                raise AssertionError(
                    f"{dag_id}/{run_id} ended {run['state']} first; task states seen: {seen}"
                )
            return None

        return wait_until(probe, timeout=timeout, what=what, interval=0.3, check=self.check)

    def wait_for_run(
        self, dag_id: str, run_id: str, *, timeout: float = 180.0, seen: dict[str, list[str]] | None = None
    ) -> RunObservation:
        """Wait until the run ends; return its final state, task instances and every task state seen."""
        seen = {} if seen is None else seen

        def ended() -> RunObservation | None:
            state = self.dag_run(dag_id, run_id)["state"]
            tis = self.task_instances(dag_id, run_id)
            _record(seen, tis)
            return RunObservation(dag_id, run_id, state, tis, seen) if state in TERMINAL_RUN_STATES else None

        try:
            return wait_until(
                ended, timeout=timeout, what=f"{dag_id}/{run_id} to end", interval=0.3, check=self.check
            )
        except TimeoutError as error:
            raise TimeoutError(f"{error}; task states seen: {seen}") from None

    # --------------------------------------------------------------------------------------- files

    def log_files(self) -> list[Path]:
        """Every file the stack has logged to: the processes' own logs and Airflow's log folder."""
        return list(_walk([self.logs, self.home / "logs"]))

    def task_log_files(self, dag_id: str, run_id: str, task_id: str) -> list[Path]:
        return sorted(
            (self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}").rglob(
                "*.log"
            )
        )


def _record(seen: dict[str, list[str]], tis: Mapping[str, Mapping[str, Any]]) -> None:
    for task_id, ti in tis.items():
        history = seen.setdefault(task_id, [])
        if not history or history[-1] != ti["state"]:
            history.append(ti["state"])


def new_api_key() -> str:
    """A distinctive key, so a scan for it cannot match anything else."""
    return f"sk-real-airflow-{secrets.token_hex(12)}"
