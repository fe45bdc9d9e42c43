"""
A throw-away PostgreSQL server on loopback for the real Airflow stack's metadata database.

Production Airflow runs on PostgreSQL, and the real stack's scheduler, triggerer, dag-processor,
api-server and task processes all write to the database at once, which sqlite serialises with a file
lock (``database is locked`` under load). :class:`PostgresServer` runs ``initdb`` into a temporary
directory and starts ``postgres`` in the foreground as a child process, stopped by its pid.

Binaries: those shipped inside the ``pgserver`` wheel (PostgreSQL 16, in the ``test`` extra and pinned
by the lock), so every machine, a fresh one with nothing but Python and pip included, runs the same
server build; where the wheel is not installed, the machine's own (``/usr/lib/postgresql/<major>/bin``,
the newest major). ``CEREBRAFORM_TEST_PG_BIN`` names another ``bin`` directory.

PostgreSQL refuses to run as root; under root the server runs as ``nobody``, owning only its own
temporary directory. It listens on TCP 127.0.0.1 only (no unix socket), trusts loopback connections,
and trades durability for speed (``fsync=off``): a test database is thrown away at the end.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .harness import free_port, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

SYSTEM_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "airflow"


def find_bin_dir() -> Path:
    """The ``bin`` directory with ``initdb``, ``postgres`` and ``pg_ctl`` to use (see the module doc)."""
    override = os.environ.get("CEREBRAFORM_TEST_PG_BIN")
    if override:
        return Path(override)
    try:
        import pgserver  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        return Path(pgserver.__file__).parent / "pginstall" / "bin"
    if SYSTEM_ROOT.is_dir():
        majors = sorted(
            (p for p in SYSTEM_ROOT.iterdir() if (p / "bin" / "initdb").exists()),
            key=lambda p: int(p.name) if p.name.isdigit() else 0,
        )
        if majors:
            return majors[-1] / "bin"
    raise RuntimeError(
        "no PostgreSQL server binaries: install the test extra (it brings the pgserver wheel) "
        "or Debian's postgresql package, or set CEREBRAFORM_TEST_PG_BIN"
    )


class PostgresServer:
    """
    One PostgreSQL server for a test session; databases are created per stack with :meth:`create_database`.

    :param bin_dir: where ``initdb`` and ``postgres`` are; default :func:`find_bin_dir`.
    :param startup_timeout: seconds for ``initdb`` plus the server to accept connections.
    """

    def __init__(self, bin_dir: Path | None = None, *, startup_timeout: float = 60.0) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.startup_timeout = startup_timeout
        self.root = Path(tempfile.mkdtemp(prefix="cerebraform-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._run_as = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PostgresServer:
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
        if self._run_as is not None:
            os.chown(self.root, self._run_as.pw_uid, self._run_as.pw_gid)
        initdb = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            capture_output=True,
            preexec_fn=self._demote(),
            timeout=self.startup_timeout,
            check=False,
        )
        if initdb.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({initdb.returncode}): {(initdb.stdout + initdb.stderr)[-3000:]!r}"
            )
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it; closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                "",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._demote(),
            start_new_session=True,
        )
        wait_until(
            self._accepts_connections,
            timeout=self.startup_timeout,
            what="PostgreSQL to accept connections",
            interval=0.1,
        )
        self.startup_seconds = time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT) by pid, SIGKILL after ``timeout``; then remove the data directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create ``name`` (a copy of ``template`` when given) and return its SQLAlchemy URL."""
        clause = f" TEMPLATE {template}" if template else ""
        self.execute(f"CREATE DATABASE {name}{clause}")
        return self.url(name)

    def execute(self, statement: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement (autocommit) and return its rows (none for a statement without)."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def dump(self, database: str, path: Path) -> Path:
        """Write ``database`` as SQL (``pg_dump``) to ``path``, e.g. to scan its content for a secret."""
        with open(path, "wb") as out:
            subprocess.run(
                [
                    str(self.bin_dir / "pg_dump"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    SUPERUSER,
                    database,
                ],
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=120,
                check=True,
            )
        return path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _accepts_connections(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"postgres exited ({self.process.returncode}):\n{self.log_text()[-3000:]}")
        try:
            self.execute("SELECT 1")
        except Exception:  # psycopg2.OperationalError while it starts
            return False
        return True

    def _demote(self) -> Callable[[], None] | None:
        account = self._run_as
        if account is None:
            return None

        def demote() -> None:
            os.setgid(account.pw_gid)
            os.setgroups([])
            os.setuid(account.pw_uid)

        return demote
